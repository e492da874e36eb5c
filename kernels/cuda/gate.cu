// Gate: g = -exp(A_log) * softplus(a + dt_bias) (threshold 20), beta = sigmoid(b).
// p: 0 a, 1 b, 2 A_log (f32), 3 dt_bias (f32), 4 g (f32 out), 5 beta (f32 out)
// n: 0 T, 1 HV, 2 a dtype, 3 b dtype, 4 a row stride, 5 b row stride, 6 g row stride, 7 beta row stride
// grid: ceil(T*HV / blockDim.x); one thread per (t, h).
extern "C" __global__ void dnk_gate(Args a) {
    long long T = a.n[0], HV = a.n[1];
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * HV) return;
    long long t = idx / HV, h = idx % HV;
    float av = ldx((const void*)a.p[0], (int)a.n[2], t * a.n[4] + h);
    float bv = ldx((const void*)a.p[1], (int)a.n[3], t * a.n[5] + h);
    float alog = ((const float*)a.p[2])[h];
    float dtb = ((const float*)a.p[3])[h];
    ((float*)a.p[4])[t * a.n[6] + h] = -expf(alog) * softplus20(av + dtb);
    ((float*)a.p[5])[t * a.n[7] + h] = 1.0f / (1.0f + expf(-bv));
}
