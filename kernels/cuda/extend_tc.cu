// Chunked gated delta rule on tensor cores (chunk DN_CHUNK = 64), the same
// mathematics as dnk_extend (extend.cu) and the same tables, in two launches:
//
// phase 0, one block per (value head, chunk), every chunk of every sequence in
// parallel: with G the inclusive cumsum of g, kn/qn the (optionally
// L2-normalised) keys and queries and L the chunk's length,
//   A = strict_lower(diag(beta) (Kn Kn^T ⊙ exp(G_i - G_j)))       (mma)
//   M = lower(Qn Kn^T ⊙ exp(G_i - G_j)), diagonal included           (mma)
//   T = (I + A)^-1, by blocks of 16: the four diagonal blocks by forward
//       substitution, then block rows in order, T_ij = -T_ii sum_k A_ik T_kj
//   W = T diag(beta exp G) Kn, U = T diag(beta) V                     (mma)
// into the workspace, with the norms and decays: A, W and U once per chunk;
//
// phase 1, one block per (value head, sequence, DN_TC_BV state rows), the only
// sequential part: the state tile S (V-major rows [v][K], f32) stays in
// shared memory through the sequence's chunks:
//   V' = U - W S^T, O = scale (diag(exp G) Qn S^T + M V')               (mma)
//   S <- exp(G_L) S + V'^T diag(exp(G_L - G)) Kn                       (mma)
// with snapshots at chunk ends, and S rounded to the state dtype only when
// stored. Operands are bf16 (mma m16n8k16) or tf32 (m16n8k8) as `precision`
// says, accumulation f32; the triangular solve and the state stay in f32.
//
// Every 16x8 output tile is computed by one warp in a fixed k-order and every
// other value by one thread, so results depend neither on the block size nor
// on the rest of the batch.
//
// Arguments: ExtendTcArgs (args.h). Workspace: DN_TC_CHUNK_FLOATS(K, V) floats
// per (chunk of the launch, value head). Grids: phase 0 (HV, <= chunks),
// phase 1 (HV, <= sequences, ceil(V / DN_TC_BV)); blocks stride over the
// chunks / sequences; any block size that is a multiple of 32.
#include "args.h"

#define DN_TC_BV 32
// per (chunk, head): W [64][K], U [64][V], M [64][64], then NK, NQ, exp(G), exp(G_L - G) [64] each
#define DN_TC_CHUNK_FLOATS(K, V) (64LL * (K) + 64LL * (V) + 64LL * 64 + 4LL * 64)
// phase 0: A, T [64][64], Z [16][48], G, beta, NK, NQ, exp(G) [64]; phase 1 needs less
#define DN_TC_SMEM_FLOATS (2 * 64 * 64 + 16 * 48 + 5 * 64)

__device__ __forceinline__ float tc_q(const ExtendTcArgs& a, long long tok, int kh, int x) {
    return ldx(a.io.q, (int)a.io.q_dtype, tok * a.io.q_token + kh * a.io.q_head + x);
}
__device__ __forceinline__ float tc_k(const ExtendTcArgs& a, long long tok, int kh, int x) {
    return ldx(a.io.k, (int)a.io.k_dtype, tok * a.io.k_token + kh * a.io.k_head + x);
}
__device__ __forceinline__ float tc_v(const ExtendTcArgs& a, long long tok, int h, int x) {
    return ldx(a.io.v, (int)a.io.v_dtype, tok * a.io.v_token + h * a.io.v_head + x);
}

// The workspace of one (chunk, head): where each of its parts starts.
struct TcChunk {
    float* w;  // [64][K]
    float* u;  // [64][V]
    float* m;  // [64][64]
    float* nk; // [64] key norm factors (1 without l2norm)
    float* nq; // [64]
    float* eg; // [64] exp(G_j)
    float* dg; // [64] exp(G_L - G_j)
};

__device__ __forceinline__ TcChunk tc_chunk(const ExtendTcArgs& a, long long c) {
    const int K = (int)a.io.dk, V = (int)a.io.dv;
    float* base = a.workspace + ((c - a.chunk_begin) * a.io.hv + blockIdx.x) * DN_TC_CHUNK_FLOATS(K, V);
    TcChunk t;
    t.w = base;
    t.u = t.w + 64 * K;
    t.m = t.u + 64 * V;
    t.nk = t.m + 64 * 64;
    t.nq = t.nk + 64;
    t.eg = t.nq + 64;
    t.dg = t.eg + 64;
    return t;
}

// (I + A)^-1 of a strictly lower 64x64 A (row-major, stride 64) into T, blocked by 16.
__device__ void tc_unit_lower_inverse(const float* A, float* T, float* Z) {
    const int tid = threadIdx.x, nt = blockDim.x;
    // diagonal blocks: column `col` of (I + A_bb)^-1 by forward substitution; above the block, zero
    for (int col = tid; col < 64; col += nt) {
        const int b0 = (col / 16) * 16;
        for (int i = 0; i < b0; ++i) T[i * 64 + col] = 0.0f;
        for (int i = b0; i < b0 + 16; ++i) {
            float x = i == col ? 1.0f : 0.0f;
            for (int j = col; j < i; ++j) x -= A[i * 64 + j] * T[j * 64 + col];
            T[i * 64 + col] = x;
        }
    }
    __syncthreads();
    // block rows in order: Z = sum_{k < bi} A_{bi,k} T_{k,bj}, then T_{bi,bj} = -T_{bi,bi} Z
    for (int bi = 1; bi < 4; ++bi) {
        const int w = 16 * bi, i0 = 16 * bi;
        for (int e = tid; e < 16 * w; e += nt) {
            const int r = e / w, cc = e % w;
            float z = 0.0f;
            for (int k = (cc / 16) * 16; k < i0; ++k) z += A[(i0 + r) * 64 + k] * T[k * 64 + cc];
            Z[r * 48 + cc] = z;
        }
        __syncthreads();
        for (int e = tid; e < 16 * w; e += nt) {
            const int r = e / w, cc = e % w;
            float x = 0.0f;
            for (int m = 0; m <= r; ++m) x -= T[(i0 + r) * 64 + i0 + m] * Z[m * 48 + cc];
            T[(i0 + r) * 64 + cc] = x;
        }
        __syncthreads();
    }
}

// Phase 0: the products of each chunk of the launch, for value head blockIdx.x.
__device__ void tc_chunk_products(const ExtendTcArgs& a, float* sm) {
    const int HK = (int)a.io.hk, HV = (int)a.io.hv, K = (int)a.io.dk, V = (int)a.io.dv;
    const int h = blockIdx.x, kh = key_head(h, HK, HV, (int)a.io.head_mapping);
    const int tid = threadIdx.x, nt = blockDim.x, warp = tid / 32, nw = nt / 32, lane = tid % 32;
    const int op = (int)a.precision;
    const bool l2 = a.io.l2norm != 0;
    float* As = sm;
    float* Ts = As + 64 * 64;
    float* Z = Ts + 64 * 64;
    float* G = Z + 16 * 48;
    float* Bt = G + 64;
    float* NK = Bt + 64;
    float* NQ = NK + 64;
    float* EG = NQ + 64;
    for (long long c = a.chunk_begin + blockIdx.y; c < a.chunk_begin + a.chunk_count; c += gridDim.y) {
        const long long t0 = a.chunks[4 * c];
        const int L = (int)a.chunks[4 * c + 1];
        const TcChunk ws = tc_chunk(a, c);
        // 1. gates and norms (one warp per row)
        if (tid == 0) {
            float acc = 0.0f;
            for (int j = 0; j < 64; ++j) {
                if (j < L) acc += a.io.g[(t0 + j) * a.io.g_token + h];
                G[j] = acc;
            }
        }
        for (int j = tid; j < 64; j += nt) Bt[j] = j < L ? ldx(a.io.beta, (int)a.io.beta_dtype, (t0 + j) * a.io.beta_token + h) : 0.0f;
        for (int j = warp; j < 64; j += nw) {
            float sk = 0.0f, sq = 0.0f;
            if (l2 && j < L) {
                for (int x = lane; x < K; x += 32) {
                    const float kx = tc_k(a, t0 + j, kh, x), qx = tc_q(a, t0 + j, kh, x);
                    sk += kx * kx;
                    sq += qx * qx;
                }
            }
            sk = warp_sum(sk);
            sq = warp_sum(sq);
            if (lane == 0) {
                NK[j] = l2 ? 1.0f / sqrtf(sk + 1e-6f) : 1.0f;
                NQ[j] = l2 ? 1.0f / sqrtf(sq + 1e-6f) : 1.0f;
            }
        }
        __syncthreads();
        for (int j = tid; j < 64; j += nt) {
            EG[j] = j < L ? expf(G[j]) : 0.0f;
            ws.eg[j] = EG[j];
            ws.dg[j] = j < L ? expf(G[L - 1] - G[j]) : 0.0f;
            ws.nk[j] = NK[j];
            ws.nq[j] = NQ[j];
        }
        // 2. A and M, 16x8 tiles; tiles wholly above the diagonal are zero
        for (int tile = warp; tile < 32; tile += nw) {
            const int m0 = (tile / 8) * 16, n0 = (tile % 8) * 8;
            float kk[4] = {0.0f, 0.0f, 0.0f, 0.0f}, qk[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (n0 <= m0 + 15 && m0 < L) {
                auto kn_t = [&](int x, int cc) { const int j = n0 + cc; return j < L ? tc_k(a, t0 + j, kh, x) * NK[j] : 0.0f; };
                mma_tile_op(op, kk, K, [&](int r, int x) { const int i = m0 + r; return i < L ? tc_k(a, t0 + i, kh, x) * NK[i] : 0.0f; }, kn_t);
                mma_tile_op(op, qk, K, [&](int r, int x) { const int i = m0 + r; return i < L ? tc_q(a, t0 + i, kh, x) * NQ[i] : 0.0f; }, kn_t);
            }
            for (int e = 0; e < 4; ++e) {
                const int i = m0 + mma_row(e), j = n0 + mma_col(e);
                float av = 0.0f, mv = 0.0f;
                if (i < L && j <= i) {
                    const float dec = expf(G[i] - G[j]);
                    if (j < i) av = Bt[i] * dec * kk[e];
                    mv = dec * qk[e];
                }
                As[i * 64 + j] = av;
                ws.m[i * 64 + j] = mv;
            }
        }
        __syncthreads();
        // 3. T = (I + A)^-1
        tc_unit_lower_inverse(As, Ts, Z);
        // 4. W = T diag(beta exp G) Kn and U = T diag(beta) V
        const int ntk = (K + 7) / 8, ntv = (V + 7) / 8;
        for (int tile = warp; tile < 4 * (ntk + ntv); tile += nw) {
            const bool isw = tile < 4 * ntk;
            const int tt = isw ? tile : tile - 4 * ntk, nn = isw ? ntk : ntv, cols = isw ? K : V;
            const int m0 = (tt / nn) * 16, n0 = (tt % nn) * 8;
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (m0 < L) {
                auto t_row = [&](int r, int j) { return Ts[(m0 + r) * 64 + j]; };
                if (isw) {
                    mma_tile_op(op, d, L, t_row, [&](int j, int cc) {
                        const int x = n0 + cc;
                        return x < K ? Bt[j] * EG[j] * NK[j] * tc_k(a, t0 + j, kh, x) : 0.0f;
                    });
                } else {
                    mma_tile_op(op, d, L, t_row, [&](int j, int cc) {
                        const int x = n0 + cc;
                        return x < V ? Bt[j] * tc_v(a, t0 + j, h, x) : 0.0f;
                    });
                }
            }
            for (int e = 0; e < 4; ++e) {
                const int r = m0 + mma_row(e), x = n0 + mma_col(e);
                if (r < L && x < cols) (isw ? ws.w : ws.u)[r * cols + x] = d[e];
            }
        }
        // the next chunk reuses the shared tiles
        __syncthreads();
    }
}

// Phase 1: the recurrence through each sequence's chunks, for value head
// blockIdx.x and state rows [blockIdx.z * DN_TC_BV, + DN_TC_BV).
__device__ void tc_recurrence(const ExtendTcArgs& a, float* sm) {
    const int HK = (int)a.io.hk, HV = (int)a.io.hv, K = (int)a.io.dk, V = (int)a.io.dv;
    const int h = blockIdx.x, kh = key_head(h, HK, HV, (int)a.io.head_mapping);
    const int v0 = blockIdx.z * DN_TC_BV, bv = V - v0 < DN_TC_BV ? V - v0 : DN_TC_BV;
    const int tid = threadIdx.x, nt = blockDim.x, warp = tid / 32, nw = nt / 32;
    const int op = (int)a.precision, sdt = (int)a.state_dtype;
    const float scale = a.io.scale;
    float* S = sm;                      // [DN_TC_BV][K]: the state tile, f32, across chunks
    float* Vp = S + DN_TC_BV * DN_KMAX; // [64][DN_TC_BV]: V'
    float* Oq = Vp + 64 * DN_TC_BV;     // [64][DN_TC_BV]: exp(G) Qn S^T
    const long long per = (long long)HV * V * K;
    const long long hoff = ((long long)h * V + v0) * K;
    const long long VK = (long long)bv * K;
    const int ntk = (K + 7) / 8;
    for (long long i = blockIdx.y; i < a.seqs_count; i += gridDim.y) {
        const long long* seq = a.seqs + i * 6;
        const long long slot = seq[2];
        for (long long e = tid; e < VK; e += nt) S[e] = seq[3] ? ldx(a.state, sdt, slot * per + hoff + e) : 0.0f;
        __syncthreads();
        for (long long c = seq[4]; c < seq[5]; ++c) {
            const long long t0 = a.chunks[4 * c];
            const int L = (int)a.chunks[4 * c + 1];
            const TcChunk ws = tc_chunk(a, c);
            // (a) V' = U - W S^T and exp(G) Qn S^T
            for (int tile = warp; tile < 16; tile += nw) {
                const int m0 = (tile / 4) * 16, n0 = (tile % 4) * 8;
                float wsv[4] = {0.0f, 0.0f, 0.0f, 0.0f}, qs[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                if (m0 < L && n0 < bv) {
                    auto s_t = [&](int x, int cc) { const int v = n0 + cc; return v < bv ? S[v * K + x] : 0.0f; };
                    mma_tile_op(op, wsv, K, [&](int r, int x) { const int rr = m0 + r; return rr < L ? ws.w[rr * K + x] : 0.0f; }, s_t);
                    mma_tile_op(op, qs, K, [&](int r, int x) { const int rr = m0 + r; return rr < L ? tc_q(a, t0 + rr, kh, x) * ws.nq[rr] : 0.0f; }, s_t);
                }
                for (int e = 0; e < 4; ++e) {
                    const int r = m0 + mma_row(e), v = n0 + mma_col(e);
                    const bool in = r < L && v < bv;
                    Vp[r * DN_TC_BV + v] = in ? ws.u[r * V + v0 + v] - wsv[e] : 0.0f;
                    Oq[r * DN_TC_BV + v] = in ? ws.eg[r] * qs[e] : 0.0f;
                }
            }
            __syncthreads();
            // (b) outputs, 16 tiles, and (c) the state, 2 x ceil(K / 8) tiles: (b) does not read S
            const float dl = ws.eg[L - 1];
            for (int tile = warp; tile < 16 + 2 * ntk; tile += nw) {
                float d[4];
                if (tile < 16) {
                    const int m0 = (tile / 4) * 16, n0 = (tile % 4) * 8;
                    for (int e = 0; e < 4; ++e) d[e] = Oq[(m0 + mma_row(e)) * DN_TC_BV + n0 + mma_col(e)];
                    if (m0 < L && n0 < bv) {
                        mma_tile_op(op, d, L, [&](int r, int j) { return ws.m[(m0 + r) * 64 + j]; },
                                    [&](int j, int cc) { return Vp[j * DN_TC_BV + n0 + cc]; });
                    }
                    for (int e = 0; e < 4; ++e) {
                        const int r = m0 + mma_row(e), v = n0 + mma_col(e);
                        if (r < L && v < bv) stx(a.io.o, (int)a.io.o_dtype, (t0 + r) * a.io.o_token + h * a.io.o_head + v0 + v, scale * d[e]);
                    }
                } else {
                    const int tt = tile - 16, m0 = (tt / ntk) * 16, n0 = (tt % ntk) * 8;
                    for (int e = 0; e < 4; ++e) {
                        const int v = m0 + mma_row(e), x = n0 + mma_col(e);
                        d[e] = v < bv && x < K ? dl * S[v * K + x] : 0.0f;
                    }
                    if (m0 < bv) {
                        mma_tile_op(op, d, L, [&](int r, int j) { return Vp[j * DN_TC_BV + m0 + r]; },
                                    [&](int j, int cc) {
                                        const int x = n0 + cc;
                                        return x < K ? ws.dg[j] * ws.nk[j] * tc_k(a, t0 + j, kh, x) : 0.0f;
                                    });
                    }
                    for (int e = 0; e < 4; ++e) {
                        const int v = m0 + mma_row(e), x = n0 + mma_col(e);
                        if (v < bv && x < K) S[v * K + x] = d[e];
                    }
                }
            }
            __syncthreads();
            // snapshots taken at this chunk's end
            for (long long s = a.chunks[4 * c + 2]; s < a.chunks[4 * c + 3]; ++s) {
                const long long dst = a.snapshot_slots[s] * per + hoff;
                for (long long e = tid; e < VK; e += nt) stx(a.state, sdt, dst + e, S[e]);
            }
        }
        for (long long e = tid; e < VK; e += nt) stx(a.state, sdt, slot * per + hoff + e, S[e]);
        __syncthreads();
    }
}

extern "C" __global__ void dnk_extend_tc(ExtendTcArgs a) {
    __shared__ float sm[DN_TC_SMEM_FLOATS];
    if (a.phase == 0) {
        tc_chunk_products(a, sm);
    } else {
        tc_recurrence(a, sm);
    }
}
