// The C ABI from C++ through dn:: RAII wrappers (deltanet_raii.hpp). Checks
// one of deltanet's invariants on the way: a prefill of T tokens followed by
// one decode step leaves the same state as a prefill of all T + 1 tokens.
//
//   c++ -std=c++17 -I include examples/cpp/raii.cpp -L target/release -ldeltanet -o raii
#include "deltanet_raii.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace {
constexpr int64_t HK = 2, HV = 4, K = 16, V = 8, T = 40;

// Token-major q, k, v, g, beta of `tokens` tokens, starting `from` tokens into one fixed pseudo-random stream.
struct Inputs {
  dn::HostTensor q, k, v, g, beta, o;
  Inputs(int64_t tokens, int64_t from)
      : q({tokens, HK, K}), k({tokens, HK, K}), v({tokens, HV, V}), g({tokens, HV}), beta({tokens, HV}), o({tokens, HV, V}) {
    auto fill = [&](dn::HostTensor &t, int64_t per_token, float lo, float hi, uint32_t salt) {
      for (size_t i = 0; i < t.data().size(); i++) {
        uint32_t x = static_cast<uint32_t>(from * per_token + static_cast<int64_t>(i)) * 2654435761u ^ salt;
        x ^= x >> 15, x *= 2246822519u, x ^= x >> 13;
        t.data()[i] = lo + (hi - lo) * static_cast<float>(x % 10000) / 10000.0f;
      }
    };
    fill(q, HK * K, -1, 1, 1), fill(k, HK * K, -1, 1, 2), fill(v, HV * V, -1, 1, 3);
    fill(g, HV, -0.3f, -0.01f, 4), fill(beta, HV, 0.05f, 0.95f, 5);
  }
};

void extend(const dn::BackendHandle &b, dn::Pool &pool, const dn::BatchHandle &batch, Inputs &x) {
  dn::check(dn_extend(b.get(), pool.get(), 0, batch.get(), x.q.dl(), x.k.dl(), x.v.dl(), x.g.dl(), x.beta.dl(), x.o.dl(), nullptr));
}
}  // namespace

int main() {
  try {
    dn::BackendHandle cpu = dn::backend("cpu");
    dn_pool_config cfg{};
    cfg.layers = 1;
    cfg.slots = 2;
    cfg.dims = dn_model_dims{static_cast<size_t>(HK), static_cast<size_t>(HV), static_cast<size_t>(K), static_cast<size_t>(V), 4,
                             DN_HEAD_MAPPING_GROUPED};
    cfg.state_dtype = DN_DTYPE_F32;
    cfg.conv_dtype = DN_DTYPE_F32;
    dn::Pool pool(cpu, cfg);
    std::vector<uint64_t> slots = pool.alloc(2);

    Inputs all(T + 1, 0), head(T, 0), last(1, T);
    extend(cpu, pool, pool.extend({0, T + 1}, {slots[0]}, {0}), all);
    extend(cpu, pool, pool.extend({0, T}, {slots[1]}, {0}), head);
    dn::check(dn_decode(cpu.get(), pool.get(), 0, pool.decode({slots[1]}).get(), last.q.dl(), last.k.dl(), last.v.dl(), last.g.dl(),
                        last.beta.dl(), last.o.dl(), nullptr));

    std::vector<uint8_t> a = pool.export_state(slots[0]), b = pool.export_state(slots[1]);
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size() / 4; i++) {
      float x, y;
      std::memcpy(&x, &a[4 * i], 4), std::memcpy(&y, &b[4 * i], 4);
      num += (x - y) * double(x - y), den += double(x) * x;
    }
    double ratio = std::sqrt(num / den);
    std::printf("prefill(T+1) vs prefill(T)+decode: state error ratio %.3e\n", ratio);

    try {  // errors are exceptions with the code and message
      pool.free({slots[0], slots[0]});
      return 1;
    } catch (const dn::Error &e) {
      std::printf("refused as expected (code %d): %s\n", static_cast<int>(e.code), e.what());
      if (e.code != DN_ERR_DOUBLE_FREE) return 1;
    }
    return ratio < 1e-5 && den > 0 ? 0 : 1;
  } catch (const dn::Error &e) {
    std::fprintf(stderr, "deltanet error %d: %s\n", static_cast<int>(e.code), e.what());
    return 1;
  }
}
