// Tensor-core matrix products for the kernels: mma.sync on sm_80 and later
// (bf16 m16n8k16 and tf32 m16n8k8, f32 accumulation), emulated warp-collectively
// in emu/mma.h. Operand fragments are gathered through accessors, so a product
// can read shared tiles, the workspace or the inputs (any dtype) alike.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k8"),
// with groupID g = lane / 4 and t = lane % 4, written as register -> element:
//   bf16 A (16x16): reg i = (row g + 8 (i & 1), cols 2t + 8 (i >> 1) + {0, 1}), low half first
//   bf16 B (16x8):  reg i = (rows 2t + 8 i + {0, 1}, col g)
//   tf32 A (16x8):  reg i = (row g + 8 (i & 1), col t + 4 (i >> 1))
//   tf32 B (8x8):   reg i = (row t + 4 i, col g)
//   C/D (16x8 f32): element i = (row g + 8 (i >> 1), col 2t + (i & 1))

// operand precision of a product
#define MMA_BF16 0 // bf16 operands, k-step 16
#define MMA_TF32 1 // tf32 operands, k-step 8

// round to nearest, ties away from zero, to the 10-bit mantissa of tf32 (cvt.rna.tf32.f32)
__device__ __forceinline__ unsigned int f32_to_tf32(float x) {
#if !defined(DELTANET_EMU) && __CUDA_ARCH__ >= 800
    unsigned int u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return u;
#else
    // the emulation, and architectures without the instruction (which never run an mma)
    unsigned int u = f32_to_bits(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u; // inf and NaN as they are
    return (u + 0x1000u) & 0xffffe000u;
#endif
}

// two bf16 in one register, `lo` in the low half (the lower column or row index)
__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
    return (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
}

// d += A B on one 16x8x16 bf16 tile (every lane of the warp calls it)
__device__ __forceinline__ void mma_bf16_16816(float d[4], const unsigned int a[4], const unsigned int b[2]) {
#if defined(DELTANET_EMU)
    emu::mma_bf16_m16n8k16(d, a, b);
#elif __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap(); // the host selects tensor-core kernels on sm_80 and later only
#endif
}

// d += A B on one 16x8x8 tf32 tile (every lane of the warp calls it)
__device__ __forceinline__ void mma_tf32_1688(float d[4], const unsigned int a[4], const unsigned int b[2]) {
#if defined(DELTANET_EMU)
    emu::mma_tf32_m16n8k8(d, a, b);
#elif __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

// d (this lane's elements of a 16x8 output tile) += sum over k < kd of fa(r, k) fb(k, c), with
// r in [0, 16) and c in [0, 8) relative to the tile; fa / fb read as f32 and give 0 outside
// their matrices' rows and columns; k >= kd is zero here. The k-order is fixed, so a tile's
// result does not depend on which warp computes it.
template <int OP, class FA, class FB>
__device__ __forceinline__ void mma_tile(float d[4], int kd, FA fa, FB fb) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    auto A = [&](int r, int k) { return k < kd ? fa(r, k) : 0.0f; };
    auto B = [&](int k, int c) { return k < kd ? fb(k, c) : 0.0f; };
    unsigned int a[4], b[2];
    if (OP == MMA_BF16) {
        for (int k0 = 0; k0 < kd; k0 += 16) {
            for (int i = 0; i < 4; ++i) {
                const int r = g + 8 * (i & 1), k = k0 + 2 * t + 8 * (i >> 1);
                a[i] = pack_bf16x2(A(r, k), A(r, k + 1));
            }
            for (int i = 0; i < 2; ++i) {
                const int k = k0 + 2 * t + 8 * i;
                b[i] = pack_bf16x2(B(k, g), B(k + 1, g));
            }
            mma_bf16_16816(d, a, b);
        }
    } else {
        for (int k0 = 0; k0 < kd; k0 += 8) {
            for (int i = 0; i < 4; ++i) a[i] = f32_to_tf32(A(g + 8 * (i & 1), k0 + t + 4 * (i >> 1)));
            for (int i = 0; i < 2; ++i) b[i] = f32_to_tf32(B(k0 + t + 4 * i, g));
            mma_tf32_1688(d, a, b);
        }
    }
}

// Row and column (in the 16x8 tile) of this lane's accumulator element i.
__device__ __forceinline__ int mma_row(int i) { return (int)(threadIdx.x % 32) / 4 + 8 * (i >> 1); }
__device__ __forceinline__ int mma_col(int i) { return 2 * ((int)(threadIdx.x % 32) % 4) + (i & 1); }

// mma_tile with the operand precision chosen at run time (MMA_BF16 or MMA_TF32).
template <class FA, class FB>
__device__ __forceinline__ void mma_tile_op(int op, float d[4], int kd, FA fa, FB fb) {
    if (op == MMA_BF16) {
        mma_tile<MMA_BF16>(d, kd, fa, fb);
    } else {
        mma_tile<MMA_TF32>(d, kd, fa, fb);
    }
}
