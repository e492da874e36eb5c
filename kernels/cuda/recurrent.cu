// Fused one-token recurrence for decode (in place on the slot) and verify
// (draft steps: step t starts from its parent's state, the slot's for the
// root, and writes scratch [slot][t]; the main state is not touched).
// State is V-major [HV][V][K]: row v holds the K entries S[:, v].
//
// Per token and value head h (kh its key head), with a = exp(g), b = beta:
//   sk = S[v]·k, u = b (v_v - a sk), S[v] <- a S[v] + u k, o_v = scale S[v]·q
//
// p: 0 q [T,HK,K], 1 k [T,HK,K], 2 v [T,HV,V], 3 g f32 [T,HV], 4 beta [T,HV],
//    5 o [T,HV,V], 6 state of this layer [rows][HV][V][K], 7 scratch of this
//    layer [rows][D][HV][V][K] or 0, 8 slot per request (i64), 9 parents i64
//    [N*D] or 0
// n: 0 N, 1 HK, 2 HV, 3 K (<= DN_KMAX), 4 V, 5 D (1 for decode), 6 mode
//    (0 decode, 1 verify), 7 head mapping, 8 L2-normalise q/k, 9 q dtype,
//    10 k dtype, 11 v dtype, 12 beta dtype, 13 o dtype, 14 state dtype,
//    15/16 q strides (token, head), 17/18 k strides, 19/20 v strides,
//    21 g token stride, 22 beta token stride, 23/24 o strides
// f: 0 scale
// grid: (ceil(V / DN_ROWS_PER_BLOCK), HV, N), block 128 threads (4 warps);
// each warp owns rows v, lanes split K. No shared memory, no barriers.
#define DN_KMAX 128
#define DN_KPL (DN_KMAX / 32)
#define DN_ROWS_PER_BLOCK 16

extern "C" __global__ void dnk_recurrent(Args a) {
    const int HK = (int)a.n[1], HV = (int)a.n[2], K = (int)a.n[3], V = (int)a.n[4];
    const long long D = a.n[5];
    const int mode = (int)a.n[6];
    const int h = blockIdx.y;
    const long long i = blockIdx.z;
    const int kh = key_head(h, HK, HV, (int)a.n[7]);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const float scale = a.f[0];
    const long long slot = ((const long long*)a.p[8])[i];
    const long long per = (long long)HV * V * K; // one state
    const int sdt = (int)a.n[14];
    void* state = (void*)a.p[6];
    void* scratch = (void*)a.p[7];
    const long long* parents = (const long long*)a.p[9];

    for (long long t = 0; t < D; ++t) {
        const long long tok = i * D + t;
        float kv[DN_KPL], qv[DN_KPL];
        float ssk = 0.0f, ssq = 0.0f;
#pragma unroll
        for (int m = 0; m < DN_KPL; ++m) {
            int e = lane + 32 * m;
            kv[m] = e < K ? ldx((const void*)a.p[1], (int)a.n[10], tok * a.n[17] + kh * a.n[18] + e) : 0.0f;
            qv[m] = e < K ? ldx((const void*)a.p[0], (int)a.n[9], tok * a.n[15] + kh * a.n[16] + e) : 0.0f;
            ssk += kv[m] * kv[m];
            ssq += qv[m] * qv[m];
        }
        if (a.n[8]) {
            float rk = 1.0f / sqrtf(warp_sum(ssk) + 1e-6f);
            float rq = 1.0f / sqrtf(warp_sum(ssq) + 1e-6f);
#pragma unroll
            for (int m = 0; m < DN_KPL; ++m) {
                kv[m] *= rk;
                qv[m] *= rq;
            }
        }
        const float decay = expf(((const float*)a.p[3])[tok * a.n[21] + h]);
        const float b = ldx((const void*)a.p[4], (int)a.n[12], tok * a.n[22] + h);
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
            const float vv = ldx((const void*)a.p[2], (int)a.n[11], tok * a.n[19] + h * a.n[20] + v);
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
            if (lane == 0) stx((void*)a.p[5], (int)a.n[13], tok * a.n[23] + h * a.n[24] + v, scale * oq);
        }
    }
}
