// A small emulation of the CUDA execution model on the host, so the kernels in
// kernels/cuda compile with a C++20 compiler and run on the CPU in tests.
//
// - blocks of a grid run one after another;
// - the threads of a block run concurrently, one OS thread each (std::thread);
// - __syncthreads() is a std::barrier over the block's threads;
// - __shared__ variables are function statics: one copy, shared by the block
//   (launches are serialised, blocks sequential, and every thread passes an
//   end-of-block barrier before the next block starts);
// - warp shuffles exchange through a per-warp buffer between two warp barriers
//   (every lane of the warp must take part, as with a full mask on a GPU);
// - mma.sync is warp-collective the same way (emu/mma.h);
// - threadIdx / blockIdx are thread_locals, blockDim / gridDim launch globals.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

#define DELTANET_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {
struct Warp {
    float buf[32];
    std::unique_ptr<std::barrier<>> bar;
    // mma.sync operand exchange, double-buffered (see emu/mma.h): [turn][lane][register]
    unsigned mma_a[2][32][4];
    unsigned mma_b[2][32][2];
    unsigned mma_turn[32]; // each lane's count of mma operations, mod 2
};
struct Launch {
    std::unique_ptr<std::barrier<>> block;
    std::vector<Warp> warps;
};
extern Launch* current;
} // namespace emu

extern thread_local dim3 threadIdx;
extern thread_local dim3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

inline void __syncthreads() { emu::current->block->arrive_and_wait(); }

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline float __shfl_xor_sync(unsigned int, float v, int lane_mask) {
    unsigned tid = threadIdx.x;
    emu::Warp& w = emu::current->warps[tid / 32];
    unsigned lane = tid % 32;
    w.buf[lane] = v;
    w.bar->arrive_and_wait();
    float r = w.buf[lane ^ (unsigned)lane_mask];
    w.bar->arrive_and_wait();
    return r;
}

#include "mma.h"
