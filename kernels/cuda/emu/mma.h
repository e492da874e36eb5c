// Warp-collective mma.sync for the emulation, exactly per the PTX ISA's
// fragment layouts ("Matrix Fragments for mma.m16n8k16" / "mma.m16n8k8"):
// every lane of the warp hands in its A and B registers, then each lane
// computes its own four accumulator elements from the whole matrices.
//
// The layouts are written here as the inverse map, from a matrix element to
// the (lane, register, half) holding it; the kernel side (../mma.cu) and the
// unit test (mma_test.cpp) write the forward map, from (lane, register) to
// the element. With groupID g = lane / 4 and t = lane % 4:
//   bf16 m16n8k16  A 16x16 row: reg i holds (g + 8 (i & 1), 2t + 8 (i >> 1)) and the next column, low half first
//                  B 16x8  col: reg i holds (2t + 8 i, g) and the next row, low half first
//   tf32 m16n8k8   A 16x8  row: reg i holds (g + 8 (i & 1), t + 4 (i >> 1))
//                  B 8x8   col: reg i holds (t + 4 i, g)
//   C/D 16x8 f32:  element i is (g + 8 (i >> 1), 2t + (i & 1))
// Products of bf16 or tf32 operands are exact in f32; each lane sums them in
// k order onto its accumulator in f32. (The hardware's summation order and
// intermediate rounding are unspecified; device-check compares the two.)
//
// One warp barrier per operation: the operand buffers alternate between two
// turns, so a lane writes a turn's buffer again only after every lane has
// passed the next operation's barrier, i.e. finished reading this one.
#pragma once

namespace emu {
inline float bf16_bits_to_f32(unsigned h) {
    unsigned u = (h & 0xffffu) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// tf32 operands: the low 13 bits of the register are not read
inline float tf32_bits_to_f32(unsigned u) {
    u &= 0xffffe000u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Publishes this lane's registers; returns the turn whose buffers now hold the whole warp's.
template <int NA, int NB>
inline unsigned mma_exchange(Warp& w, unsigned lane, const unsigned* a, const unsigned* b) {
    const unsigned turn = w.mma_turn[lane];
    w.mma_turn[lane] = turn ^ 1u;
    for (int i = 0; i < NA; ++i) w.mma_a[turn][lane][i] = a[i];
    for (int i = 0; i < NB; ++i) w.mma_b[turn][lane][i] = b[i];
    w.bar->arrive_and_wait();
    return turn;
}

// A[r][k] of the 16x16 bf16 operand
inline float a_bf16(const Warp& w, unsigned turn, int r, int k) {
    const int lane = (r % 8) * 4 + (k % 8) / 2;
    const int reg = (r / 8) + 2 * (k / 8);
    const unsigned word = w.mma_a[turn][lane][reg];
    return bf16_bits_to_f32(k % 2 ? word >> 16 : word);
}

// B[k][n] of the 16x8 bf16 operand
inline float b_bf16(const Warp& w, unsigned turn, int k, int n) {
    const int lane = n * 4 + (k % 8) / 2;
    const unsigned word = w.mma_b[turn][lane][k / 8];
    return bf16_bits_to_f32(k % 2 ? word >> 16 : word);
}

inline float a_tf32(const Warp& w, unsigned turn, int r, int k) {
    return tf32_bits_to_f32(w.mma_a[turn][(r % 8) * 4 + k % 4][(r / 8) + 2 * (k / 4)]);
}

inline float b_tf32(const Warp& w, unsigned turn, int k, int n) {
    return tf32_bits_to_f32(w.mma_b[turn][n * 4 + k % 4][k / 4]);
}

// d (this lane's four accumulator elements) += A B over a k-extent of KD, reading operands through fa / fb
template <int KD, class FA, class FB>
inline void mma_accumulate(float* d, unsigned lane, FA fa, FB fb) {
    const int g = (int)lane / 4, t = (int)lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int r = g + 8 * (i >> 1), c = 2 * t + (i & 1);
        float acc = d[i];
        for (int k = 0; k < KD; ++k) acc += fa(r, k) * fb(k, c);
        d[i] = acc;
    }
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, d
inline void mma_bf16_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2]) {
    const unsigned lane = threadIdx.x % 32;
    Warp& w = current->warps[threadIdx.x / 32];
    const unsigned turn = mma_exchange<4, 2>(w, lane, a, b);
    mma_accumulate<16>(d, lane, [&](int r, int k) { return a_bf16(w, turn, r, k); },
                       [&](int k, int n) { return b_bf16(w, turn, k, n); });
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d, a, b, d
inline void mma_tf32_m16n8k8(float d[4], const unsigned a[4], const unsigned b[2]) {
    const unsigned lane = threadIdx.x % 32;
    Warp& w = current->warps[threadIdx.x / 32];
    const unsigned turn = mma_exchange<4, 2>(w, lane, a, b);
    mma_accumulate<8>(d, lane, [&](int r, int k) { return a_tf32(w, turn, r, k); },
                      [&](int k, int n) { return b_tf32(w, turn, k, n); });
}
} // namespace emu
