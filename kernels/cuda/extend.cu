// Chunked gated delta rule (chunk DN_CHUNK = 64) over packed sequences, one
// block per (value head, sequence, tile of DN_BV state rows v): rows of V are
// independent given A and W, so each tile recomputes those and owns its rows. Chunks start at the sequence's first
// token of this call and are also cut at snapshot positions, so a snapshot is
// the state at a chunk end. Per chunk of length L with G the inclusive cumsum
// of g, kn/qn the (optionally L2-normalised) keys and queries:
//   A[i][j] = beta_i exp(G_i - G_j) kn_i·kn_j (i > j)    (strict lower)
//   W = (I + A)^-1 diag(beta exp(G)) Kn, U = (I + A)^-1 diag(beta) V
//     (forward substitution, one thread per column: no barrier inside)
//   V' = U - W S^T-rows, O = scale (diag(exp G) Qn S + (Qn Kn^T ⊙ L) V')
//   S <- exp(G_L) S + sum_j exp(G_L - G_j) kn_j V'_j
// State S is V-major [V][K]; it is carried in f32 in the workspace from the
// slot (or zero) to the slot, and rounded to the state dtype only there.
//
// Arguments: ExtendArgs (args.h); its workspace holds, per block,
// DN_BV*K + 64*(3K + 2*DN_BV) floats.
// grid: (HV, <= N, ceil(V / DN_BV)): blocks stride over the sequences; any
// block size that is a multiple of 32.
#include "args.h"

#define DN_CHUNK 64
#define DN_BV 32

extern "C" __global__ void dnk_extend(ExtendArgs a) {
    __shared__ float A[DN_CHUNK * DN_CHUNK];
    __shared__ float M[DN_CHUNK * DN_CHUNK];
    __shared__ float G[DN_CHUNK];
    __shared__ float Bt[DN_CHUNK];
    __shared__ float NK[DN_CHUNK];
    __shared__ float NQ[DN_CHUNK];
    __shared__ float EG[DN_CHUNK]; // exp(G_j)
    __shared__ float DG[DN_CHUNK]; // exp(G_L - G_j)

    const int HK = (int)a.io.hk, HV = (int)a.io.hv, K = (int)a.io.dk, V = (int)a.io.dv;
    const int h = blockIdx.x;
    const int v0 = blockIdx.z * DN_BV;
    const int bv = V - v0 < DN_BV ? V - v0 : DN_BV;
    const int kh = key_head(h, HK, HV, (int)a.io.head_mapping);
    const int tid = threadIdx.x, nt = blockDim.x;
    const float scale = a.io.scale;
    const int sdt = (int)a.state_dtype;
    const bool l2 = a.io.l2norm != 0;
    const long long* chunks = a.chunks;
    const long long* snaps = a.snapshot_slots;
    void* state = a.state;
    const long long per = (long long)HV * V * K;
    const long long hoff = ((long long)h * V + v0) * K; // this tile's rows
    const long long VK = (long long)bv * K;              // elements of this tile

    // workspace of this block; blocks stride over the sequences (gridDim.y <= N)
    // so the workspace is bounded by the grid, not by the batch
    float* S = a.workspace + (((long long)blockIdx.y * HV + h) * gridDim.z + blockIdx.z) * ((long long)DN_BV * K + (long long)DN_CHUNK * (3 * K + 2 * DN_BV));
    float* Kc = S + VK;
    float* Qc = Kc + DN_CHUNK * K;
    float* Wc = Qc + DN_CHUNK * K;
    float* Uc = Wc + DN_CHUNK * K; // [DN_CHUNK][DN_BV]
    float* Oi = Uc + DN_CHUNK * DN_BV;

    for (long long i = blockIdx.y; i < a.seqs_count; i += gridDim.y) {
        const long long* seq = a.seqs + i * 6;
        const long long slot = seq[2];
        for (long long e = tid; e < VK; e += nt) S[e] = seq[3] ? ldx(state, sdt, slot * per + hoff + e) : 0.0f;
        __syncthreads();

        for (long long c = seq[4]; c < seq[5]; ++c) {
            const long long t0 = chunks[4 * c];
            const int L = (int)chunks[4 * c + 1];
            // 1. load keys, queries, gates
            for (int e = tid; e < L * K; e += nt) {
                int j = e / K, x = e % K;
                long long tok = t0 + j;
                Kc[e] = ldx(a.io.k, (int)a.io.k_dtype, tok * a.io.k_token + kh * a.io.k_head + x);
                Qc[e] = ldx(a.io.q, (int)a.io.q_dtype, tok * a.io.q_token + kh * a.io.q_head + x);
            }
            for (int j = tid; j < L; j += nt) {
                long long tok = t0 + j;
                Bt[j] = ldx(a.io.beta, (int)a.io.beta_dtype, tok * a.io.beta_token + h);
            }
            if (tid == 0) {
                float acc = 0.0f;
                for (int j = 0; j < L; ++j) {
                    acc += a.io.g[(t0 + j) * a.io.g_token + h];
                    G[j] = acc;
                }
            }
            __syncthreads();
            if (l2) {
                for (int j = tid; j < L; j += nt) {
                    float sk = 0.0f, sq = 0.0f;
                    for (int x = 0; x < K; ++x) {
                        sk += Kc[j * K + x] * Kc[j * K + x];
                        sq += Qc[j * K + x] * Qc[j * K + x];
                    }
                    NK[j] = 1.0f / sqrtf(sk + 1e-6f);
                    NQ[j] = 1.0f / sqrtf(sq + 1e-6f);
                }
                __syncthreads();
                for (int e = tid; e < L * K; e += nt) {
                    int j = e / K;
                    Kc[e] *= NK[j];
                    Qc[e] *= NQ[j];
                }
                __syncthreads();
            }
            // 2. A (strict lower, with beta) and M (lower with diagonal)
            for (int e = tid; e < L * L; e += nt) {
                int r = e / L, j = e % L;
                float av = 0.0f, mv = 0.0f;
                if (j <= r) {
                    float kk = 0.0f, qk = 0.0f;
                    for (int x = 0; x < K; ++x) {
                        kk += Kc[r * K + x] * Kc[j * K + x];
                        qk += Qc[r * K + x] * Kc[j * K + x];
                    }
                    float dec = expf(G[r] - G[j]);
                    if (j < r) av = Bt[r] * dec * kk;
                    mv = dec * qk;
                }
                A[r * DN_CHUNK + j] = av;
                M[r * DN_CHUNK + j] = mv;
            }
            for (int j = tid; j < L; j += nt) {
                EG[j] = expf(G[j]);
                DG[j] = expf(G[L - 1] - G[j]);
            }
            __syncthreads();
            // 3. forward substitution, one thread per column of [W | U]
            for (int col = tid; col < K + bv; col += nt) {
                const bool isw = col < K;
                const int x = isw ? col : col - K;
                float* X = isw ? Wc : Uc;
                const int ld = isw ? K : DN_BV;
                for (int r = 0; r < L; ++r) {
                    float rhs;
                    if (isw) {
                        rhs = Bt[r] * EG[r] * Kc[r * K + x];
                    } else {
                        rhs = Bt[r] * ldx(a.io.v, (int)a.io.v_dtype, (t0 + r) * a.io.v_token + h * a.io.v_head + v0 + x);
                    }
                    for (int j = 0; j < r; ++j) rhs -= A[r * DN_CHUNK + j] * X[j * ld + x];
                    X[r * ld + x] = rhs;
                }
            }
            __syncthreads();
            // 4. V' = U - W S (in place in Uc) and the inter-chunk part of O
            for (int e = tid; e < L * bv; e += nt) {
                int r = e / bv, v = e % bv;
                float ws = 0.0f, qs = 0.0f;
                for (int x = 0; x < K; ++x) {
                    float s = S[(long long)v * K + x];
                    ws += Wc[r * K + x] * s;
                    qs += Qc[r * K + x] * s;
                }
                Uc[r * DN_BV + v] -= ws;
                Oi[r * DN_BV + v] = EG[r] * qs;
            }
            __syncthreads();
            // 5. outputs
            for (int e = tid; e < L * bv; e += nt) {
                int r = e / bv, v = e % bv;
                float acc = Oi[r * DN_BV + v];
                for (int j = 0; j <= r; ++j) acc += M[r * DN_CHUNK + j] * Uc[j * DN_BV + v];
                stx(a.io.o, (int)a.io.o_dtype, (t0 + r) * a.io.o_token + h * a.io.o_head + v0 + v, scale * acc);
            }
            // 6. state update
            const float dl = EG[L - 1];
            for (long long e = tid; e < VK; e += nt) {
                int v = (int)(e / K), x = (int)(e % K);
                float acc = dl * S[e];
                for (int j = 0; j < L; ++j) acc += DG[j] * Kc[j * K + x] * Uc[j * DN_BV + v];
                S[e] = acc;
            }
            __syncthreads();
            // 7. snapshots taken at this chunk's end
            for (long long s = chunks[4 * c + 2]; s < chunks[4 * c + 3]; ++s) {
                const long long dst = snaps[s] * per + hoff;
                for (long long e = tid; e < VK; e += nt) stx(state, sdt, dst + e, S[e]);
            }
        }
        for (long long e = tid; e < VK; e += nt) stx(state, sdt, slot * per + hoff + e, S[e]);
        __syncthreads();
    }
}
