// Short causal depthwise convolution + SiLU over [q | k | v] channels, for
// extend (packed sequences, with snapshots), update (one token per request)
// and verify (draft steps, each from its parent's window, into the scratch),
// and for speculative mode replay: verify (each draft's window built from the
// slot's conv state and its path's inputs, the raw input recorded per draft,
// no window stored) and commit (the conv state shifted by the accepted path's
// recorded inputs, and copied to the snapshot slot when one is named).
// Conv state is channels-first [slot][C][W-1], oldest column first.
// Arguments: ConvArgs (args.h).
// grid: (ceil(C / blockDim.x), N or commits); one thread per (sequence, channel).
#include "args.h"

#define DN_MAX_CONV_W 8

// replay commit of channel c for commit i (seqs: 3 x i64 per commit: slot,
// path length, snapshot slot or -1; parents: [commits * D] the path's steps,
// root first): the conv state becomes the last W-1 of (itself, the path's
// recorded inputs), values moved, never recomputed
__device__ __forceinline__ void conv_commit_replay(const ConvArgs& a, long long i, long long c) {
    const long long C = a.channels, D = a.draft;
    const int W1 = (int)a.width - 1, sdt = (int)a.state_dtype;
    const long long* cm = a.seqs + 3 * i;
    const long long slot = cm[0], m = cm[1], snap = cm[2];
    const long long* path = a.parents + i * D;
    const long long per = C * W1;
    float win[DN_MAX_CONV_W];
    for (int q = 0; q < W1; ++q) {
        const long long from = q + m; // index into (conv state, path inputs)
        win[q] = from < W1 ? ldx(a.state, sdt, slot * per + c * W1 + from) : ldx(a.windows, sdt, (slot * D + path[from - W1]) * C + c);
    }
    for (int q = 0; q < W1; ++q) {
        stx(a.state, sdt, slot * per + c * W1 + q, win[q]);
        if (snap >= 0) stx(a.state, sdt, snap * per + c * W1 + q, win[q]);
    }
}

extern "C" __global__ void dnk_conv(ConvArgs a) {
    const long long C = a.channels;
    const int W = (int)a.width;
    const int W1 = W - 1;
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long i = blockIdx.y;
    if (c >= C) return;
    if (a.mode == 4) {
        conv_commit_replay(a, i, c);
        return;
    }
    const long long* seq = a.seqs + i * 6;
    const long long tok0 = seq[0], len = seq[1], slot = seq[2];
    const int xdt = (int)a.x_dtype, odt = (int)a.out_dtype, sdt = (int)a.state_dtype;
    const int mode = (int)a.mode;
    const long long D = a.draft;
    const float* w = a.weight + c * W;
    const float bias = a.bias ? a.bias[c] : 0.0f;
    void* state = a.state;
    void* windows = a.windows;
    const long long per = C * W1; // elements of one conv state
    float win[DN_MAX_CONV_W];

    if (mode == 3) {
        // replay verify: step t's window is the last W-1 of (the slot's conv state,
        // the inputs of its ancestors, root first), each input as the conv dtype holds it
        const long long* parents = a.parents + i * D;
        for (long long t = 0; t < D; ++t) {
            int j = W1;
            long long x = parents[t];
            while (j > 0 && x >= 0) {
                --j;
                win[j] = round_to(sdt, ldx(a.x, xdt, (i * D + x) * a.x_row + c));
                x = parents[x];
            }
            for (int q = 0; q < j; ++q) win[q] = ldx(state, sdt, slot * per + c * W1 + q + W1 - j);
            long long tok = i * D + t;
            float xv = ldx(a.x, xdt, tok * a.x_row + c);
            float acc = bias;
            for (int q = 0; q < W1; ++q) acc += w[q] * win[q];
            acc += w[W1] * xv;
            stx(a.out, odt, tok * a.out_row + c, silu(acc));
            stx(windows, sdt, (slot * D + t) * C + c, xv);
        }
        return;
    }

    if (mode == 2) {
        const long long* parents = a.parents;
        for (long long t = 0; t < D; ++t) {
            long long par = parents[i * D + t];
            long long src = par < 0 ? slot * per : (slot * D + par) * per;
            const void* sb = par < 0 ? (const void*)state : (const void*)windows;
            for (int j = 0; j < W1; ++j) win[j] = ldx(sb, sdt, src + c * W1 + j);
            long long tok = i * D + t;
            float xv = ldx(a.x, xdt, tok * a.x_row + c);
            float acc = bias;
            for (int j = 0; j < W1; ++j) acc += w[j] * win[j];
            acc += w[W1] * xv;
            stx(a.out, odt, tok * a.out_row + c, silu(acc));
            long long dst = (slot * D + t) * per + c * W1;
            for (int j = 0; j + 1 < W1; ++j) stx(windows, sdt, dst + j, win[j + 1]);
            stx(windows, sdt, dst + W1 - 1, xv);
        }
        return;
    }

    const bool init = mode == 1 || seq[3] != 0;
    for (int j = 0; j < W1; ++j) win[j] = init ? ldx(state, sdt, slot * per + c * W1 + j) : 0.0f;
    const long long* snaps = a.snapshots;
    for (long long t = 0; t < len; ++t) {
        long long tok = tok0 + t;
        float xv = ldx(a.x, xdt, tok * a.x_row + c);
        float acc = bias;
        for (int j = 0; j < W1; ++j) acc += w[j] * win[j];
        acc += w[W1] * xv;
        stx(a.out, odt, tok * a.out_row + c, silu(acc));
        for (int j = 0; j + 1 < W1; ++j) win[j] = win[j + 1];
        win[W1 - 1] = xv;
        if (mode == 0) {
            for (long long s = seq[4]; s < seq[5]; ++s) {
                if (snaps[2 * s] == t + 1) {
                    long long dst = snaps[2 * s + 1] * per + c * W1;
                    for (int j = 0; j < W1; ++j) stx(state, sdt, dst + j, win[j]);
                }
            }
        }
    }
    for (int j = 0; j < W1; ++j) stx(state, sdt, slot * per + c * W1 + j, win[j]);
}
