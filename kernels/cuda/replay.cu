// The delta rule of speculative mode replay (sglang's and FlashInfer's
// "ReplaySSM"): no draft step's state is ever stored.
//
// Verify (mode 0): every draft's output from the slot's state, each step from
// its parent's state (the slot's for a root), chains and trees; no state is
// written. Each step's k (normalised as used), v, g and beta are recorded per
// value head in the pool's records, `[slot][D][HV][K + V + 2]` f32.
// Commit (mode 1): the recorded steps of the accepted path (root first)
// applied to the slot's state in place, then stored once (and into the
// snapshot slot when one is named).
//
// Both run the decode's device functions of recurrent.cu on the decode's lane
// layout, and round the state to its dtype after every step as a decode's
// store and load do: a verify output is bitwise scratch verify's, a commit's
// state bitwise what decoding the path's tokens leaves.
//
// A block holds its rows of the state in registers across the steps: row
// slot `it` of a lane is row `p0 + (it * nwarps + warp) * rpw + sub` of the
// block's DN_ROWS_PER_BLOCK, in passes of `nwarps * rpw * DN_RP_SLOTS` rows
// (one pass with 4 warps). A tree step whose parent is not the step just
// computed (nor one of its descendants' ancestors held) is recomputed from the
// slot's state along its path, so nothing per step is kept but the current
// state: each node from its own path, in one read of the slot's state.
//
// Arguments: ReplayArgs (args.h).
// grid: (ceil(V / DN_ROWS_PER_BLOCK), HV, requests (verify) or commits (commit)).
#include "args.h"

#define DN_RP_SLOTS 4

// the rows a lane holds in one pass
struct DnTile {
    float s[DN_RP_SLOTS][8];
};

__device__ __forceinline__ int dn_tile_row(int p0, int it, int warp, int nwarps, const DnLanes& l) {
    return p0 + (it * nwarps + warp) * l.rpw + l.sub;
}

// one step on every row of the tile: the inputs' kn (in shared memory), decay and b
// for the head, v per row from `vrow` (a row's v, or null to read the call's v);
// when `out`, the output of each row; the tile is then rounded to the state dtype
__device__ __forceinline__ void dn_tile_step(DnTile& tile, const DnLanes& l, int p0, int warp, int nwarps, int row0, int V, int K,
                                             int sdt, const float* kn, float decay, float b, const ReplayArgs& a, long long tok, int h,
                                             const float* vrec, const float* qn, float* rec_v) {
#pragma unroll
    for (int it = 0; it < DN_RP_SLOTS; ++it) {
        const int r = dn_tile_row(p0, it, warp, nwarps, l);
        const int v = row0 + r;
        const bool row = r < DN_ROWS_PER_BLOCK && v < V;
        float vv = 0.0f;
        if (row) vv = vrec ? vrec[v] : ldx(a.io.v, (int)a.io.v_dtype, tok * a.io.v_token + h * a.io.v_head + v);
        dn_row_update(tile.s[it], kn, l, row, K, vv, decay, b);
        if (qn) {
            const float oq = dn_row_dot(tile.s[it], qn, l, row, K);
            if (row && (threadIdx.x & 31) % l.gw == 0) {
                stx(a.io.o, (int)a.io.o_dtype, tok * a.io.o_token + h * a.io.o_head + v, a.io.scale * oq);
                if (rec_v) rec_v[v] = vv;
            }
        }
        dn_round_row(sdt, tile.s[it]);
    }
}

__device__ __forceinline__ void dn_tile_load(DnTile& tile, const void* buf, long long at, const DnLanes& l, int p0, int warp, int nwarps,
                                             int row0, int V, int K, int sdt) {
#pragma unroll
    for (int it = 0; it < DN_RP_SLOTS; ++it) {
        const int r = dn_tile_row(p0, it, warp, nwarps, l);
        const int v = row0 + r;
        const bool row = r < DN_ROWS_PER_BLOCK && v < V;
#pragma unroll
        for (int j = 0; j < 8; ++j) tile.s[it][j] = 0.0f;
        dn_load_row(buf, sdt, at + (long long)v * K, l, row, K, tile.s[it]);
    }
}

__device__ __forceinline__ void dn_tile_store(const DnTile& tile, void* buf, long long at, const DnLanes& l, int p0, int warp,
                                              int nwarps, int row0, int V, int K, int sdt) {
#pragma unroll
    for (int it = 0; it < DN_RP_SLOTS; ++it) {
        const int r = dn_tile_row(p0, it, warp, nwarps, l);
        const int v = row0 + r;
        dn_store_row(buf, sdt, at + (long long)v * K, l, r < DN_ROWS_PER_BLOCK && v < V, K, tile.s[it]);
    }
}

extern "C" __global__ void dnk_replay(ReplayArgs a) {
    __shared__ float kn[DN_KMAX]; // the step's k (and q in verify), normalised when asked
    __shared__ float qn[DN_KMAX];
    const int HK = (int)a.io.hk, HV = (int)a.io.hv, K = (int)a.io.dk, V = (int)a.io.dv;
    const long long D = a.draft;
    const int h = blockIdx.y;
    const long long i = blockIdx.z;
    const int kh = key_head(h, HK, HV, (int)a.io.head_mapping);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int sdt = (int)a.state_dtype;
    const long long R = K + V + 2; // f32 per record
    const DnLanes l = dn_lanes(sdt, K, (unsigned long long)a.state, lane);
    const int row0 = blockIdx.x * DN_ROWS_PER_BLOCK;
    const int pass = nwarps * l.rpw * DN_RP_SLOTS;
    const long long per = (long long)HV * V * K; // one state
    const long long head = (long long)h * V * K;

    if (a.mode == 1) {
        const long long* c = a.commits + 3 * i;
        const long long slot = c[0], len = c[1], snap = c[2];
        const long long* path = a.paths + i * D;
        for (int p0 = 0; p0 < DN_ROWS_PER_BLOCK; p0 += pass) {
            DnTile cur;
            dn_tile_load(cur, a.state, slot * per + head, l, p0, warp, nwarps, row0, V, K, sdt);
            for (long long j = 0; j < len; ++j) {
                const float* rec = a.records + ((slot * D + path[j]) * HV + h) * R;
                for (int e = threadIdx.x; e < K; e += blockDim.x) kn[e] = rec[e];
                __syncthreads();
                dn_tile_step(cur, l, p0, warp, nwarps, row0, V, K, sdt, kn, expf(rec[K + V]), rec[K + V + 1], a, 0, h, rec + K, nullptr,
                             nullptr);
                __syncthreads();
            }
            dn_tile_store(cur, a.state, slot * per + head, l, p0, warp, nwarps, row0, V, K, sdt);
            if (snap >= 0) dn_tile_store(cur, a.state, snap * per + head, l, p0, warp, nwarps, row0, V, K, sdt);
        }
        return;
    }

    const long long slot = a.slots[i];
    const long long* parents = a.parents + i * D;
    for (int p0 = 0; p0 < DN_ROWS_PER_BLOCK; p0 += pass) {
        DnTile root, cur;
        dn_tile_load(root, a.state, slot * per + head, l, p0, warp, nwarps, row0, V, K, sdt);
        cur = root;
        long long at = -1; // the step whose state `cur` holds (-1: the slot's)
        for (long long t = 0; t < D; ++t) {
            const long long p = parents[t];
            if (p != at) {
                // p's state: from `at`'s when it is an ancestor of p, else from the slot's,
                // the n steps below that start applied root first
                long long n = 0, x = p;
                while (x >= 0 && x != at) {
                    ++n;
                    x = parents[x];
                }
                if (x < 0) cur = root;
                for (long long depth = n - 1; depth >= 0; --depth) {
                    long long y = p;
                    for (long long up = 0; up < depth; ++up) y = parents[y];
                    const long long tok = i * D + y;
                    if (warp == 0) dn_load_qk(a.io, tok, kh, kn, qn, false);
                    __syncthreads();
                    const float decay = expf(a.io.g[tok * a.io.g_token + h]);
                    const float b = ldx(a.io.beta, (int)a.io.beta_dtype, tok * a.io.beta_token + h);
                    dn_tile_step(cur, l, p0, warp, nwarps, row0, V, K, sdt, kn, decay, b, a, tok, h, nullptr, nullptr, nullptr);
                    __syncthreads();
                }
            }
            const long long tok = i * D + t;
            float* rec = a.records + ((slot * D + t) * HV + h) * R;
            if (warp == 0) dn_load_qk(a.io, tok, kh, kn, qn, true);
            __syncthreads();
            const float g = a.io.g[tok * a.io.g_token + h];
            const float b = ldx(a.io.beta, (int)a.io.beta_dtype, tok * a.io.beta_token + h);
            // the step's k, g and beta once per head (by the first row block and pass), v by the rows' owners
            if (blockIdx.x == 0 && p0 == 0) {
                for (int e = threadIdx.x; e < K; e += blockDim.x) rec[e] = kn[e];
                if (threadIdx.x == 0) {
                    rec[K + V] = g;
                    rec[K + V + 1] = b;
                }
            }
            dn_tile_step(cur, l, p0, warp, nwarps, row0, V, K, sdt, kn, expf(g), b, a, tok, h, nullptr, qn, rec + K);
            at = t;
            __syncthreads();
        }
    }
}
