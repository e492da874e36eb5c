// Fused one-token recurrence for decode (in place on the slot) and verify
// (draft steps: step t starts from its parent's state, the slot's for the
// root, and writes scratch [slot][t]; the main state is not touched).
// State is V-major [HV][V][K]: row v holds the K entries S[:, v].
//
// Per token and value head h (kh its key head), with a = exp(g), b = beta:
//   sk = S[v]·k, u = b (v_v - a sk), S[v] <- a S[v] + u k, o_v = scale S[v]·q
//
// Arguments: RecurrentArgs (args.h).
// grid: (ceil(V / DN_ROWS_PER_BLOCK), HV, N), block 128 threads (4 warps).
// Per token, the first warp loads q and k and normalises them once for the
// block, into shared memory. State rows are then read and written with 16-byte
// vector accesses (4 f32 or 8 bf16 entries per lane; a group of lanes per row,
// two rows per warp for bf16 at K = 128) when the state dtype, K and the
// buffers' alignment allow; otherwise one warp per row, lanes strided over K.
// Decode and verify run the same path, so a verify step is bitwise a decode.
#include "args.h"

#define DN_KMAX 128
#define DN_KPL (DN_KMAX / 32)
#define DN_ROWS_PER_BLOCK 16

// sum over aligned groups of `width` lanes (a power of two <= 32); every lane of the warp takes part
__device__ __forceinline__ float group_sum(float x, int width) {
    for (int o = width / 2; o >= 1; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// the 16 bytes of state at element i (4 f32 or 8 bf16 entries, 16-byte aligned) into f
__device__ __forceinline__ void ld_state16(const void* p, int dt, long long i, float* f) {
    const char* at = (const char*)p + i * (dt == DT_F32 ? 4 : 2);
    unsigned int w[4];
#if defined(DELTANET_EMU)
    std::memcpy(w, at, 16);
#else
    const uint4 q = *(const uint4*)at;
    w[0] = q.x;
    w[1] = q.y;
    w[2] = q.z;
    w[3] = q.w;
#endif
    for (int j = 0; j < 4; ++j) {
        if (dt == DT_F32) {
            f[j] = bits_to_f32(w[j]);
        } else {
            f[2 * j] = bf16_to_f32((unsigned short)(w[j] & 0xffffu));
            f[2 * j + 1] = bf16_to_f32((unsigned short)(w[j] >> 16));
        }
    }
}

// f (4 f32 or 8 bf16 entries, rounded to nearest even) into the 16 bytes of state at element i
__device__ __forceinline__ void st_state16(void* p, int dt, long long i, const float* f) {
    char* at = (char*)p + i * (dt == DT_F32 ? 4 : 2);
    unsigned int w[4];
    for (int j = 0; j < 4; ++j) {
        w[j] = dt == DT_F32 ? f32_to_bits(f[j]) : (unsigned int)f32_to_bf16(f[2 * j]) | ((unsigned int)f32_to_bf16(f[2 * j + 1]) << 16);
    }
#if defined(DELTANET_EMU)
    std::memcpy(at, w, 16);
#else
    *(uint4*)at = make_uint4(w[0], w[1], w[2], w[3]);
#endif
}

extern "C" __global__ void dnk_recurrent(RecurrentArgs a) {
    __shared__ float kn[DN_KMAX]; // this token's k and q, normalised when asked
    __shared__ float qn[DN_KMAX];
    const int HK = (int)a.io.hk, HV = (int)a.io.hv, K = (int)a.io.dk, V = (int)a.io.dv;
    const long long D = a.draft;
    const int mode = (int)a.mode;
    const int h = blockIdx.y;
    const long long i = blockIdx.z;
    const int kh = key_head(h, HK, HV, (int)a.io.head_mapping);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const float scale = a.io.scale;
    const long long slot = a.slots[i];
    const long long per = (long long)HV * V * K; // one state
    const int sdt = (int)a.state_dtype;
    void* state = a.state;
    void* scratch = a.scratch;
    const long long* parents = a.parents;
    // 16-byte accesses: `epl` entries per lane, `gw` lanes per row (a power of two covering K)
    const int epl = sdt == DT_F32 ? 4 : 8;
    const unsigned long long bases = (unsigned long long)state | (unsigned long long)scratch;
    const bool vec = (sdt == DT_F32 || sdt == DT_BF16) && K % epl == 0 && (bases & 15u) == 0;
    int gw = 1;
    while (gw * epl < K) gw *= 2;

    for (long long t = 0; t < D; ++t) {
        const long long tok = i * D + t;
        if (warp == 0) {
            float kv[DN_KPL], qv[DN_KPL];
            float ssk = 0.0f, ssq = 0.0f;
#pragma unroll
            for (int m = 0; m < DN_KPL; ++m) {
                int e = lane + 32 * m;
                kv[m] = e < K ? ldx(a.io.k, (int)a.io.k_dtype, tok * a.io.k_token + kh * a.io.k_head + e) : 0.0f;
                qv[m] = e < K ? ldx(a.io.q, (int)a.io.q_dtype, tok * a.io.q_token + kh * a.io.q_head + e) : 0.0f;
                ssk += kv[m] * kv[m];
                ssq += qv[m] * qv[m];
            }
            float rk = 1.0f, rq = 1.0f;
            if (a.io.l2norm) {
                rk = 1.0f / sqrtf(warp_sum(ssk) + 1e-6f);
                rq = 1.0f / sqrtf(warp_sum(ssq) + 1e-6f);
            }
#pragma unroll
            for (int m = 0; m < DN_KPL; ++m) {
                int e = lane + 32 * m;
                if (e < K) {
                    kn[e] = a.io.l2norm ? kv[m] * rk : kv[m];
                    qn[e] = a.io.l2norm ? qv[m] * rq : qv[m];
                }
            }
        }
        __syncthreads();
        const float decay = expf(a.io.g[tok * a.io.g_token + h]);
        const float b = ldx(a.io.beta, (int)a.io.beta_dtype, tok * a.io.beta_token + h);
        long long src, dst;
        const void* sbuf;
        void* dbuf;
        long long par = mode == 1 ? parents[tok] : -1;
        if (par < 0) {
            src = slot * per;
            sbuf = state;
        } else {
            src = ((slot * D) + par) * per;
            sbuf = scratch;
        }
        if (mode == 1) {
            dst = ((slot * D) + t) * per;
            dbuf = scratch;
        } else {
            dst = slot * per;
            dbuf = state;
        }
        const int row0 = blockIdx.x * DN_ROWS_PER_BLOCK;
        if (vec) {
            // 32 / gw rows per warp at a time; lane gl of a row's group owns entries [gl * epl, + epl)
            const int rpw = 32 / gw, sub = lane / gw, gl = lane % gw, e0 = gl * epl;
            for (int r0 = warp * rpw; r0 < DN_ROWS_PER_BLOCK; r0 += nwarps * rpw) {
                const int v = row0 + r0 + sub;
                const bool row = r0 + sub < DN_ROWS_PER_BLOCK && v < V;
                const bool act = row && e0 < K;
                const long long rowoff = ((long long)h * V + v) * K;
                float s[8];
                float sk = 0.0f;
                if (act) {
                    ld_state16(sbuf, sdt, src + rowoff + e0, s);
                    for (int j = 0; j < epl; ++j) sk += s[j] * kn[e0 + j];
                }
                sk = group_sum(sk, gw); // every lane takes part, active or not
                const float vv = row ? ldx(a.io.v, (int)a.io.v_dtype, tok * a.io.v_token + h * a.io.v_head + v) : 0.0f;
                const float u = b * (vv - decay * sk);
                float oq = 0.0f;
                if (act) {
                    for (int j = 0; j < epl; ++j) {
                        s[j] = decay * s[j] + kn[e0 + j] * u;
                        oq += s[j] * qn[e0 + j];
                    }
                    st_state16(dbuf, sdt, dst + rowoff + e0, s);
                }
                oq = group_sum(oq, gw);
                if (row && gl == 0) stx(a.io.o, (int)a.io.o_dtype, tok * a.io.o_token + h * a.io.o_head + v, scale * oq);
            }
        } else {
            for (int r = warp; r < DN_ROWS_PER_BLOCK; r += nwarps) {
                const int v = row0 + r;
                if (v >= V) break; // whole warp leaves together
                const long long rowoff = ((long long)h * V + v) * K;
                float s[DN_KPL];
                float sk = 0.0f;
#pragma unroll
                for (int m = 0; m < DN_KPL; ++m) {
                    int e = lane + 32 * m;
                    s[m] = e < K ? ldx(sbuf, sdt, src + rowoff + e) : 0.0f;
                    sk += e < K ? s[m] * kn[e] : 0.0f;
                }
                sk = warp_sum(sk);
                const float vv = ldx(a.io.v, (int)a.io.v_dtype, tok * a.io.v_token + h * a.io.v_head + v);
                const float u = b * (vv - decay * sk);
                float oq = 0.0f;
#pragma unroll
                for (int m = 0; m < DN_KPL; ++m) {
                    int e = lane + 32 * m;
                    if (e < K) {
                        float ns = decay * s[m] + kn[e] * u;
                        stx(dbuf, sdt, dst + rowoff + e, ns);
                        oq += ns * qn[e];
                    }
                }
                oq = warp_sum(oq);
                if (lane == 0) stx(a.io.o, (int)a.io.o_dtype, tok * a.io.o_token + h * a.io.o_head + v, scale * oq);
            }
        }
        // the next token's q and k replace these
        __syncthreads();
    }
}
