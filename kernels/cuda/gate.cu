// Gate: g = -exp(A_log) * softplus(a + dt_bias) (threshold 20), beta = sigmoid(b).
// Arguments: GateArgs (args.h).
// grid: ceil(T*HV / blockDim.x); one thread per (t, h).
#include "args.h"

extern "C" __global__ void dnk_gate(GateArgs a) {
    long long T = a.tokens, HV = a.hv;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * HV) return;
    long long t = idx / HV, h = idx % HV;
    float av = ldx(a.a, (int)a.a_dtype, t * a.a_row + h);
    float bv = ldx(a.b, (int)a.b_dtype, t * a.b_row + h);
    float alog = a.a_log[h];
    float dtb = a.dt_bias[h];
    a.g[t * a.g_row + h] = -expf(alog) * softplus20(av + dtb);
    a.beta[t * a.beta_row + h] = 1.0f / (1.0f + expf(-bv));
}
