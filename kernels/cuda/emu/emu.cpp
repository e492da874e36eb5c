// The emulation's translation unit: the kernel sources, exactly as NVRTC
// compiles them, plus one launch entry point for the Rust launcher.
#include "emu.h"

#include <cstring>
#include <mutex>

#include "../common.cu"
#include "../mma.cu"
#include "../gate.cu"
#include "../conv.cu"
#include "../recurrent.cu"
#include "../replay.cu"
#include "../extend.cu"
#include "../cast.cu"
#include "../commit.cu"
#include "../extend_tc.cu"
#include "mma_probe.cu"

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
dim3 blockDim;
dim3 gridDim;
emu::Launch* emu::current = nullptr;

namespace {
// Runs one kernel on the argument block at `args` (the kernel's own struct).
typedef void (*Entry)(const void* args);

template <class A, void (*F)(A)>
void call(const void* args) {
    F(*static_cast<const A*>(args));
}

struct Kernel {
    const char* name;
    Entry fn;
    size_t args_size;
};

#define DN_KERNEL(name, A) {#name, call<A, name>, sizeof(A)}
const Kernel KERNELS[] = {
    DN_KERNEL(dnk_gate, GateArgs),
    DN_KERNEL(dnk_conv, ConvArgs),
    DN_KERNEL(dnk_recurrent, RecurrentArgs),
    DN_KERNEL(dnk_replay, ReplayArgs),
    DN_KERNEL(dnk_extend, ExtendArgs),
    DN_KERNEL(dnk_cast, CastArgs),
    DN_KERNEL(dnk_commit, CommitArgs),
    DN_KERNEL(dnk_extend_tc, ExtendTcArgs),
    DN_KERNEL(dnk_emu_mma_probe, MmaProbeArgs),
};
#undef DN_KERNEL
} // namespace

// Runs `name` over grid (gx, gy, gz) with blocks of bx threads (1-D blocks,
// a multiple of 32) on the `args_size` bytes at `args`, the kernel's argument
// struct. Returns 0, -1 for an unknown kernel, -2 for a bad block, -3 when
// `args_size` is not the size of that kernel's struct.
extern "C" int deltanet_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, const void* args,
                                   size_t args_size) {
    static std::mutex lock;
    const Kernel* k = nullptr;
    for (const Kernel& e : KERNELS) {
        if (std::strcmp(e.name, name) == 0) k = &e;
    }
    if (!k) return -1;
    if (bx == 0 || bx % 32 != 0 || bx > 1024) return -2;
    if (args_size != k->args_size) return -3;
    std::lock_guard<std::mutex> guard(lock);
    emu::Launch launch;
    launch.block = std::make_unique<std::barrier<>>((std::ptrdiff_t)bx);
    launch.warps.resize(bx / 32);
    for (auto& w : launch.warps) w.bar = std::make_unique<std::barrier<>>(32);
    emu::current = &launch;
    gridDim = dim3{gx, gy, gz};
    blockDim = dim3{bx, 1, 1};
    const Entry fn = k->fn;
    std::vector<std::thread> threads;
    threads.reserve(bx);
    for (unsigned t = 0; t < bx; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = dim3{t, 0, 0};
            for (unsigned z = 0; z < gz; ++z)
                for (unsigned y = 0; y < gy; ++y)
                    for (unsigned x = 0; x < gx; ++x) {
                        blockIdx = dim3{x, y, z};
                        // each call takes its own copy, as a kernel parameter
                        fn(args);
                        // the block is over for everyone before its shared statics are reused
                        launch.block->arrive_and_wait();
                    }
        });
    }
    for (auto& th : threads) th.join();
    emu::current = nullptr;
    return 0;
}
