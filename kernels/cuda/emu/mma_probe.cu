// An emulation-only kernel for the unit test of the emulated mma.sync: each
// warp w of the block multiplies its own matrices A_w (16 x KD, row-major),
// B_w (KD x 8, row-major) onto C_w (16 x 8) into D_w, its lanes holding the
// fragments the PTX ISA assigns them. The element-indexed formulas below are
// the ISA's own wording ("row = groupID for ai where 0 <= i < 2 || 4 <= i < 6,
// groupID + 8 otherwise" ...), written independently of emu/mma.h (which maps
// elements to lanes) and of ../mma.cu (which maps registers to elements).
// Never compiled by NVRTC.

struct MmaProbeArgs {
    const float* a;
    const float* b;
    const float* c;
    float* d;
    long long op; // MMA_BF16 (m16n8k16) or MMA_TF32 (m16n8k8)
};

extern "C" __global__ void dnk_emu_mma_probe(MmaProbeArgs p) {
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    const int group = lane >> 2, tig = lane % 4;
    const int kd = p.op == MMA_BF16 ? 16 : 8;
    const float* A = p.a + w * 16 * kd;
    const float* B = p.b + w * kd * 8;
    const float* C = p.c + w * 16 * 8;
    float* D = p.d + w * 16 * 8;
    unsigned int a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    if (p.op == MMA_BF16) {
        // a0..a7, two per register, low half first
        for (int i = 0; i < 8; ++i) {
            const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
            const int col = i < 4 ? tig * 2 + (i & 1) : tig * 2 + 8 + (i & 1);
            a[i / 2] |= (unsigned int)f32_to_bf16(A[row * kd + col]) << (16 * (i % 2));
        }
        // b0..b3: row = tig * 2 + (i & 1) for i < 2, + 8 otherwise; col = groupID
        for (int i = 0; i < 4; ++i) {
            const int row = i < 2 ? tig * 2 + (i & 1) : tig * 2 + 8 + (i & 1);
            b[i / 2] |= (unsigned int)f32_to_bf16(B[row * 8 + group]) << (16 * (i % 2));
        }
    } else {
        // a0..a3: row = groupID for a0, a2, groupID + 8 for a1, a3; col = tig for a0, a1, tig + 4 for a2, a3
        for (int i = 0; i < 4; ++i) {
            const int row = (i == 0 || i == 2) ? group : group + 8;
            const int col = i < 2 ? tig : tig + 4;
            a[i] = f32_to_tf32(A[row * kd + col]);
        }
        // b0, b1: row = tig, tig + 4; col = groupID
        for (int i = 0; i < 2; ++i) b[i] = f32_to_tf32(B[(tig + 4 * i) * 8 + group]);
    }
    // c0..c3: row = groupID for c0, c1, groupID + 8 for c2, c3; col = tig * 2 + (i & 1)
    float d[4];
    for (int i = 0; i < 4; ++i) d[i] = C[(i < 2 ? group : group + 8) * 8 + tig * 2 + (i & 1)];
    if (p.op == MMA_BF16) {
        mma_bf16_16816(d, a, b);
    } else {
        mma_tf32_1688(d, a, b);
    }
    for (int i = 0; i < 4; ++i) D[(i < 2 ? group : group + 8) * 8 + tig * 2 + (i & 1)] = d[i];
}
