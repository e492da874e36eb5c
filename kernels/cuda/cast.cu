// Element-wise dtype conversion (f32 / bf16 / f16, by bit operations): the
// conversions every other kernel uses, as a kernel of their own so tests can
// check them exhaustively against the host's.
// p: 0 src, 1 dst; n: 0 count, 1 src dtype, 2 dst dtype
// grid: ceil(count / blockDim.x)
extern "C" __global__ void dnk_cast(Args a) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= a.n[0]) return;
    stx((void*)a.p[1], (int)a.n[2], idx, ldx((const void*)a.p[0], (int)a.n[1], idx));
}
