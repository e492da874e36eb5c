// Fused one-token recurrence for decode (in place on the slot) and verify
// (draft steps: step t starts from its parent's state, the slot's for the
// root, and writes scratch [slot][t]; the main state is not touched).
// State is V-major [HV][V][K]: row v holds the K entries S[:, v].
//
// Per token and value head h (kh its key head), with a = exp(g), b = beta:
//   sk = S[v]·k, u = b (v_v - a sk), S[v] <- a S[v] + u k, o_v = scale S[v]·q
//
// Arguments: RecurrentArgs (args.h).
// grid: (ceil(V / DN_ROWS_PER_BLOCK), HV, N), block 128 threads (4 warps);
// each warp owns rows v, lanes split K. No shared memory, no barriers.
#include "args.h"

#define DN_KMAX 128
#define DN_KPL (DN_KMAX / 32)
#define DN_ROWS_PER_BLOCK 16

extern "C" __global__ void dnk_recurrent(RecurrentArgs a) {
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

    for (long long t = 0; t < D; ++t) {
        const long long tok = i * D + t;
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
        if (a.io.l2norm) {
            float rk = 1.0f / sqrtf(warp_sum(ssk) + 1e-6f);
            float rq = 1.0f / sqrtf(warp_sum(ssq) + 1e-6f);
#pragma unroll
            for (int m = 0; m < DN_KPL; ++m) {
                kv[m] *= rk;
                qv[m] *= rq;
            }
        }
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
                sk += s[m] * kv[m];
            }
            sk = warp_sum(sk);
            const float vv = ldx(a.io.v, (int)a.io.v_dtype, tok * a.io.v_token + h * a.io.v_head + v);
            const float u = b * (vv - decay * sk);
            float oq = 0.0f;
#pragma unroll
            for (int m = 0; m < DN_KPL; ++m) {
                int e = lane + 32 * m;
                float ns = decay * s[m] + kv[m] * u;
                if (e < K) stx(dbuf, sdt, dst + rowoff + e, ns);
                oq += ns * qv[m];
            }
            oq = warp_sum(oq);
            if (lane == 0) stx(a.io.o, (int)a.io.o_dtype, tok * a.io.o_token + h * a.io.o_head + v, scale * oq);
        }
    }
}
