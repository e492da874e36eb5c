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
// The per-row arithmetic lives in the dn_* device functions below, which the
// replay kernel (replay.cu) runs too: a replayed step is bitwise a decode.
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


// How a block's lanes cover state rows: with 16-byte accesses (`vec`), `gw`
// lanes per row (a power of two covering K), `epl` consecutive entries per
// lane from e0; otherwise one warp per row, lane e0 holding entries e0 + 32 m
// (m < DN_KPL).
struct DnLanes {
    bool vec;
    int gw;  // lanes per row
    int rpw; // rows per warp at a time
    int epl; // entries per lane
    int e0;  // this lane's first entry
    int sub; // this lane's row among the warp's rpw rows
};

// `bases`: the state buffers' addresses or-ed (16-byte accesses need each aligned)
__device__ __forceinline__ DnLanes dn_lanes(int sdt, int K, unsigned long long bases, int lane) {
    DnLanes l;
    const int epl = sdt == DT_F32 ? 4 : 8;
    l.vec = (sdt == DT_F32 || sdt == DT_BF16) && K % epl == 0 && (bases & 15u) == 0;
    if (l.vec) {
        l.gw = 1;
        while (l.gw * epl < K) l.gw *= 2;
        l.rpw = 32 / l.gw;
        l.epl = epl;
        l.e0 = (lane % l.gw) * epl;
        l.sub = lane / l.gw;
    } else {
        l.gw = 32;
        l.rpw = 1;
        l.epl = DN_KPL;
        l.e0 = lane;
        l.sub = 0;
    }
    return l;
}

// warp 0 of the block: token `tok`'s k (and q when `with_q`) of key head kh into
// shared kn / qn, L2-normalised when asked
__device__ __forceinline__ void dn_load_qk(const DeltaArgs& io, long long tok, int kh, float* kn, float* qn, bool with_q) {
    const int K = (int)io.dk, lane = threadIdx.x & 31;
    float kv[DN_KPL], qv[DN_KPL];
    float ssk = 0.0f, ssq = 0.0f;
#pragma unroll
    for (int m = 0; m < DN_KPL; ++m) {
        int e = lane + 32 * m;
        kv[m] = e < K ? ldx(io.k, (int)io.k_dtype, tok * io.k_token + kh * io.k_head + e) : 0.0f;
        qv[m] = e < K && with_q ? ldx(io.q, (int)io.q_dtype, tok * io.q_token + kh * io.q_head + e) : 0.0f;
        ssk += kv[m] * kv[m];
        ssq += qv[m] * qv[m];
    }
    float rk = 1.0f, rq = 1.0f;
    if (io.l2norm) {
        rk = 1.0f / sqrtf(warp_sum(ssk) + 1e-6f);
        rq = 1.0f / sqrtf(warp_sum(ssq) + 1e-6f);
    }
#pragma unroll
    for (int m = 0; m < DN_KPL; ++m) {
        int e = lane + 32 * m;
        if (e < K) {
            kn[e] = io.l2norm ? kv[m] * rk : kv[m];
            if (with_q) qn[e] = io.l2norm ? qv[m] * rq : qv[m];
        }
    }
}

// this lane's entries of one state row (element `at` starts the row) into s; zeros where it holds none
__device__ __forceinline__ void dn_load_row(const void* buf, int sdt, long long at, const DnLanes& l, bool row, int K, float* s) {
    if (l.vec) {
        if (row && l.e0 < K) ld_state16(buf, sdt, at + l.e0, s);
        return;
    }
#pragma unroll
    for (int m = 0; m < DN_KPL; ++m) {
        int e = l.e0 + 32 * m;
        s[m] = row && e < K ? ldx(buf, sdt, at + e) : 0.0f;
    }
}

// s (this lane's entries of one row) into the state row at element `at`, in the state dtype
__device__ __forceinline__ void dn_store_row(void* buf, int sdt, long long at, const DnLanes& l, bool row, int K, const float* s) {
    if (l.vec) {
        if (row && l.e0 < K) st_state16(buf, sdt, at + l.e0, s);
        return;
    }
#pragma unroll
    for (int m = 0; m < DN_KPL; ++m) {
        int e = l.e0 + 32 * m;
        if (row && e < K) stx(buf, sdt, at + e, s[m]);
    }
}

// s as the state dtype holds it (what a store then a load gives)
__device__ __forceinline__ void dn_round_row(int sdt, float* s) {
    if (sdt == DT_F32) return;
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j] = bf16_to_f32(f32_to_bf16(s[j]));
}

// One token's delta rule on this lane's entries of row v: sk = S[v]·k,
// u = b (v_v - a sk), S[v] <- a S[v] + u k. Every lane of the warp takes part.
__device__ __forceinline__ void dn_row_update(float* s, const float* kn, const DnLanes& l, bool row, int K, float vv, float decay, float b) {
    float sk = 0.0f;
    if (l.vec) {
        const bool act = row && l.e0 < K;
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (act && j < l.epl) sk += s[j] * kn[l.e0 + j];
    } else {
#pragma unroll
        for (int m = 0; m < DN_KPL; ++m) {
            const int e = l.e0 + 32 * m;
            sk += row && e < K ? s[m] * kn[e] : 0.0f;
        }
    }
    sk = group_sum(sk, l.gw);
    const float u = b * (vv - decay * sk);
    if (l.vec) {
        const bool act = row && l.e0 < K;
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (act && j < l.epl) s[j] = decay * s[j] + kn[l.e0 + j] * u;
    } else {
#pragma unroll
        for (int m = 0; m < DN_KPL; ++m) {
            const int e = l.e0 + 32 * m;
            if (row && e < K) s[m] = decay * s[m] + kn[e] * u;
        }
    }
}

// S[v]·q over the row's lanes (every lane of the warp takes part)
__device__ __forceinline__ float dn_row_dot(const float* s, const float* qn, const DnLanes& l, bool row, int K) {
    float oq = 0.0f;
    if (l.vec) {
        const bool act = row && l.e0 < K;
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (act && j < l.epl) oq += s[j] * qn[l.e0 + j];
    } else {
#pragma unroll
        for (int m = 0; m < DN_KPL; ++m) {
            const int e = l.e0 + 32 * m;
            if (row && e < K) oq += s[m] * qn[e];
        }
    }
    return group_sum(oq, l.gw);
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
    const DnLanes l = dn_lanes(sdt, K, (unsigned long long)state | (unsigned long long)scratch, lane);

    for (long long t = 0; t < D; ++t) {
        const long long tok = i * D + t;
        if (warp == 0) dn_load_qk(a.io, tok, kh, kn, qn, true);
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
        // l.rpw rows per warp at a time
        for (int r0 = warp * l.rpw; r0 < DN_ROWS_PER_BLOCK; r0 += nwarps * l.rpw) {
            const int v = row0 + r0 + l.sub;
            const bool row = r0 + l.sub < DN_ROWS_PER_BLOCK && v < V;
            const long long rowoff = ((long long)h * V + v) * K;
            float s[8] = {};
            dn_load_row(sbuf, sdt, src + rowoff, l, row, K, s);
            const float vv = row ? ldx(a.io.v, (int)a.io.v_dtype, tok * a.io.v_token + h * a.io.v_head + v) : 0.0f;
            dn_row_update(s, kn, l, row, K, vv, decay, b);
            dn_store_row(dbuf, sdt, dst + rowoff, l, row, K, s);
            const float oq = dn_row_dot(s, qn, l, row, K);
            if (row && lane % l.gw == 0) stx(a.io.o, (int)a.io.o_dtype, tok * a.io.o_token + h * a.io.o_head + v, scale * oq);
        }
        // the next token's q and k replace these
        __syncthreads();
    }
}
