// RAII wrappers over the deltanet C ABI (include/deltanet.h): handles that
// destroy themselves, statuses that become exceptions carrying the code and
// the thread's message. Header-only; copy it into your engine.
#pragma once

#include "deltanet.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace dn {

// A deltanet error: the status code and dn_last_error_message() of the failing call.
struct Error : std::runtime_error {
  dn_status code;
  Error(dn_status c, const std::string &what) : std::runtime_error(what), code(c) {}
};

inline void check(dn_status s) {
  if (s != DN_OK) throw Error(s, dn_last_error_message());
}

// Owns one handle; Destroy is dn_backend_destroy / dn_pool_destroy / dn_batch_destroy.
template <typename T, dn_status (*Destroy)(T *)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(T *h) : h_(h) {}
  Handle(Handle &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  Handle &operator=(Handle &&o) noexcept {
    if (this != &o) reset(std::exchange(o.h_, nullptr));
    return *this;
  }
  Handle(const Handle &) = delete;
  Handle &operator=(const Handle &) = delete;
  ~Handle() { reset(nullptr); }
  T *get() const { return h_; }

 private:
  void reset(T *h) {
    if (h_) Destroy(h_);  // cannot fail for a live handle
    h_ = h;
  }
  T *h_ = nullptr;
};

using BackendHandle = Handle<dn_backend, dn_backend_destroy>;
using PoolHandle = Handle<dn_pool, dn_pool_destroy>;
using BatchHandle = Handle<dn_batch, dn_batch_destroy>;

inline BackendHandle backend(const char *name) {
  dn_backend *b = nullptr;
  check(dn_backend_create(name, &b));
  return BackendHandle(b);
}

class Pool {
 public:
  Pool(const BackendHandle &b, const dn_pool_config &cfg) {
    dn_pool *p = nullptr;
    check(dn_pool_create(b.get(), &cfg, &p));
    h_ = PoolHandle(p);
  }
  dn_pool *get() const { return h_.get(); }
  std::vector<uint64_t> alloc(size_t n) {
    std::vector<uint64_t> s(n);
    check(dn_pool_alloc(get(), n, s.data()));
    return s;
  }
  void free(const std::vector<uint64_t> &s) { check(dn_pool_free(get(), s.data(), s.size())); }
  dn_pool_info info() const {
    dn_pool_info i;
    check(dn_pool_info_get(get(), &i));
    return i;
  }
  // One slot's recurrent state, canonical [L, HV, K, V], as raw bytes of the pool's state dtype.
  std::vector<uint8_t> export_state(uint64_t slot) const {
    dn_pool_info i = info();
    std::vector<uint8_t> state(i.export_state_bytes), conv(i.export_conv_bytes);
    check(dn_pool_export(get(), slot, state.data(), state.size(), conv.data(), conv.size()));
    return state;
  }
  BatchHandle extend(const std::vector<int64_t> &cu_seqlens, const std::vector<uint64_t> &slots, const std::vector<uint8_t> &init) {
    dn_batch *b = nullptr;
    check(dn_batch_extend(get(), cu_seqlens.data(), slots.size(), slots.data(), init.data(), nullptr, 0, &b));
    return BatchHandle(b);
  }
  BatchHandle decode(const std::vector<uint64_t> &slots) {
    dn_batch *b = nullptr;
    check(dn_batch_decode(get(), slots.data(), slots.size(), &b));
    return BatchHandle(b);
  }

 private:
  PoolHandle h_;
};

// A contiguous host f32 tensor of rank 1..4 that owns its data and its DLTensor.
class HostTensor {
 public:
  explicit HostTensor(std::vector<int64_t> shape) : shape_(std::move(shape)) {
    size_t n = 1;
    for (int64_t d : shape_) n *= static_cast<size_t>(d);
    data_.assign(n, 0.0f);
    t_.data = data_.data();
    t_.device = DLDevice{1 /* kDLCPU */, 0};
    t_.ndim = static_cast<int32_t>(shape_.size());
    t_.dtype = DLDataType{2 /* kDLFloat */, 32, 1};
    t_.shape = shape_.data();
    t_.strides = nullptr;
    t_.byte_offset = 0;
  }
  HostTensor(const HostTensor &) = delete;  // t_ points into this object
  HostTensor &operator=(const HostTensor &) = delete;
  const DLTensor *dl() const { return &t_; }
  std::vector<float> &data() { return data_; }

 private:
  std::vector<int64_t> shape_;
  std::vector<float> data_;
  DLTensor t_{};
};

}  // namespace dn
