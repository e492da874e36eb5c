// Short causal depthwise convolution + SiLU over [q | k | v] channels, for
// extend (packed sequences, with snapshots), update (one token per request)
// and verify (draft steps, each from its parent's window, into the scratch).
// Conv state is channels-first [slot][C][W-1], oldest column first.
//
// p: 0 x [T, C], 1 weight f32 [C, W], 2 bias f32 [C] or 0, 3 out [T, C],
//    4 conv state of this layer [rows][C][W-1], 5 conv windows of this layer
//    [rows][D][C][W-1] or 0, 6 sequence table (6 x i64 per sequence: first
//    token, length, slot, has_initial_state, first snapshot, end snapshot),
//    7 snapshot table (2 x i64: position, slot), 8 parents i64 [N*D] or 0
// n: 0 N, 1 C, 2 W (<= DN_MAX_CONV_W), 3 x dtype, 4 x row stride, 5 out dtype,
//    6 out row stride, 7 state dtype, 8 mode (0 extend, 1 update, 2 verify), 9 D
// grid: (ceil(C / blockDim.x), N); one thread per (sequence, channel).
#define DN_MAX_CONV_W 8

extern "C" __global__ void dnk_conv(Args a) {
    const long long C = a.n[1];
    const int W = (int)a.n[2];
    const int W1 = W - 1;
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long i = blockIdx.y;
    if (c >= C) return;
    const long long* seq = (const long long*)a.p[6] + i * 6;
    const long long tok0 = seq[0], len = seq[1], slot = seq[2];
    const int xdt = (int)a.n[3], odt = (int)a.n[5], sdt = (int)a.n[7];
    const int mode = (int)a.n[8];
    const long long D = a.n[9];
    const float* w = (const float*)a.p[1] + c * W;
    const float bias = a.p[2] ? ((const float*)a.p[2])[c] : 0.0f;
    void* state = (void*)a.p[4];
    void* windows = (void*)a.p[5];
    const long long per = C * W1; // elements of one conv state
    float win[DN_MAX_CONV_W];

    if (mode == 2) {
        const long long* parents = (const long long*)a.p[8];
        for (long long t = 0; t < D; ++t) {
            long long par = parents[i * D + t];
            long long src = par < 0 ? slot * per : (slot * D + par) * per;
            const void* sb = par < 0 ? (const void*)state : (const void*)windows;
            for (int j = 0; j < W1; ++j) win[j] = ldx(sb, sdt, src + c * W1 + j);
            long long tok = i * D + t;
            float xv = ldx((const void*)a.p[0], xdt, tok * a.n[4] + c);
            float acc = bias;
            for (int j = 0; j < W1; ++j) acc += w[j] * win[j];
            acc += w[W1] * xv;
            stx((void*)a.p[3], odt, tok * a.n[6] + c, silu(acc));
            long long dst = (slot * D + t) * per + c * W1;
            for (int j = 0; j + 1 < W1; ++j) stx(windows, sdt, dst + j, win[j + 1]);
            stx(windows, sdt, dst + W1 - 1, xv);
        }
        return;
    }

    const bool init = mode == 1 || seq[3] != 0;
    for (int j = 0; j < W1; ++j) win[j] = init ? ldx(state, sdt, slot * per + c * W1 + j) : 0.0f;
    const long long* snaps = (const long long*)a.p[7];
    for (long long t = 0; t < len; ++t) {
        long long tok = tok0 + t;
        float xv = ldx((const void*)a.p[0], xdt, tok * a.n[4] + c);
        float acc = bias;
        for (int j = 0; j < W1; ++j) acc += w[j] * win[j];
        acc += w[W1] * xv;
        stx((void*)a.p[3], odt, tok * a.n[6] + c, silu(acc));
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
