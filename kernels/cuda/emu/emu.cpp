// The emulation's translation unit: the kernel sources, exactly as NVRTC
// compiles them, plus one launch entry point for the Rust launcher.
#include "emu.h"

#include <cstring>
#include <mutex>

#include "../common.cu"
#include "../gate.cu"
#include "../conv.cu"
#include "../recurrent.cu"
#include "../extend.cu"
#include "../cast.cu"
#include "../commit.cu"

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
dim3 blockDim;
dim3 gridDim;
emu::Launch* emu::current = nullptr;

namespace {
typedef void (*Kernel)(Args);

struct Entry {
    const char* name;
    Kernel fn;
};

const Entry KERNELS[] = {
    {"dnk_gate", dnk_gate},
    {"dnk_conv", dnk_conv},
    {"dnk_recurrent", dnk_recurrent},
    {"dnk_extend", dnk_extend},
    {"dnk_cast", dnk_cast},
    {"dnk_commit", dnk_commit},
};
} // namespace

// Runs `name` over grid (gx, gy, gz) with blocks of bx threads (1-D blocks,
// a multiple of 32). Returns 0, -1 for an unknown kernel, -2 for a bad block.
extern "C" int deltanet_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, const Args* args) {
    static std::mutex lock;
    Kernel fn = nullptr;
    for (const Entry& e : KERNELS) {
        if (std::strcmp(e.name, name) == 0) fn = e.fn;
    }
    if (!fn) return -1;
    if (bx == 0 || bx % 32 != 0 || bx > 1024) return -2;
    std::lock_guard<std::mutex> guard(lock);
    emu::Launch launch;
    launch.block = std::make_unique<std::barrier<>>((std::ptrdiff_t)bx);
    launch.warps.resize(bx / 32);
    for (auto& w : launch.warps) w.bar = std::make_unique<std::barrier<>>(32);
    emu::current = &launch;
    gridDim = dim3{gx, gy, gz};
    blockDim = dim3{bx, 1, 1};
    const Args a = *args;
    std::vector<std::thread> threads;
    threads.reserve(bx);
    for (unsigned t = 0; t < bx; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = dim3{t, 0, 0};
            for (unsigned z = 0; z < gz; ++z)
                for (unsigned y = 0; y < gy; ++y)
                    for (unsigned x = 0; x < gx; ++x) {
                        blockIdx = dim3{x, y, z};
                        fn(a);
                        // the block is over for everyone before its shared statics are reused
                        launch.block->arrive_and_wait();
                    }
        });
    }
    for (auto& th : threads) th.join();
    emu::current = nullptr;
    return 0;
}
