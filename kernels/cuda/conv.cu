// Short causal depthwise convolution + SiLU over [q | k | v] channels, for
// extend (packed sequences, with snapshots), update (one token per request)
// and verify (draft steps, each from its parent's window, into the scratch).
// Conv state is channels-first [slot][C][W-1], oldest column first.
// Arguments: ConvArgs (args.h).
// grid: (ceil(C / blockDim.x), N); one thread per (sequence, channel).
#include "args.h"

#define DN_MAX_CONV_W 8

extern "C" __global__ void dnk_conv(ConvArgs a) {
    const long long C = a.channels;
    const int W = (int)a.width;
    const int W1 = W - 1;
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long i = blockIdx.y;
    if (c >= C) return;
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
