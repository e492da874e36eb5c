// deltanet CUDA kernels: shared definitions.
//
// The host concatenates common.cu with the kernel files into one program for
// NVRTC, and hands NVRTC args.h (the kernels' argument structs) as a header by
// name, so no file is read from disk at run time. The same sources also
// compile as C++20 against emu/emu.h (the CPU emulation of the CUDA execution
// model used by the tests), where DELTANET_EMU is set.

// dtype codes shared with the host
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

__device__ __forceinline__ float bits_to_f32(unsigned int u) { return __uint_as_float(u); }
__device__ __forceinline__ unsigned int f32_to_bits(float x) { return __float_as_uint(x); }

__device__ __forceinline__ float bf16_to_f32(unsigned short h) { return bits_to_f32(((unsigned int)h) << 16); }

// round to nearest even; NaN stays NaN
__device__ __forceinline__ unsigned short f32_to_bf16(float x) {
    unsigned int u = f32_to_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    unsigned int s = ((unsigned int)h & 0x8000u) << 16;
    unsigned int e = ((unsigned int)h >> 10) & 0x1fu;
    unsigned int m = (unsigned int)h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f; // m * 2^-24, exact
        return s ? -v : v;
    }
    if (e == 31) return bits_to_f32(s | 0x7f800000u | (m << 13));
    return bits_to_f32(s | ((e + 112u) << 23) | (m << 13));
}

// round to nearest even, overflow to infinity, subnormals exact
__device__ __forceinline__ unsigned short f32_to_f16(float x) {
    unsigned int u = f32_to_bits(x);
    unsigned int s = (u >> 16) & 0x8000u;
    unsigned int a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (unsigned short)(s | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x477ff000u) return (unsigned short)(s | 0x7c00u);
    if (a < 0x38800000u) {
        float v = bits_to_f32(a) * 16777216.0f; // |x| * 2^24, exact
        return (unsigned short)(s | (unsigned int)rintf(v));
    }
    unsigned int r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (unsigned short)(s | (r >> 13));
}

__device__ __forceinline__ float ldx(const void* p, int dt, long long i) {
    if (dt == DT_F32) return ((const float*)p)[i];
    unsigned short h = ((const unsigned short*)p)[i];
    return dt == DT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

__device__ __forceinline__ void stx(void* p, int dt, long long i, float v) {
    if (dt == DT_F32) {
        ((float*)p)[i] = v;
    } else {
        ((unsigned short*)p)[i] = dt == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    }
}

// v as dtype dt holds it (what stx then ldx give)
__device__ __forceinline__ float round_to(int dt, float v) {
    if (dt == DT_F32) return v;
    return dt == DT_BF16 ? bf16_to_f32(f32_to_bf16(v)) : f16_to_f32(f32_to_f16(v));
}

__device__ __forceinline__ float warp_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 16);
    x += __shfl_xor_sync(0xffffffffu, x, 8);
    x += __shfl_xor_sync(0xffffffffu, x, 4);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x;
}

// value head -> key head (0: grouped h / (HV/HK), 1: tiled h % HK)
__device__ __forceinline__ int key_head(int h, int hk, int hv, int mapping) {
    return mapping == 0 ? h / (hv / hk) : h % hk;
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float softplus20(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
