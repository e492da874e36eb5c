// Element-wise dtype conversion (f32 / bf16 / f16, by bit operations): the
// conversions every other kernel uses, as a kernel of their own so tests can
// check them exhaustively against the host's.
// Arguments: CastArgs (args.h).
// grid: ceil(count / blockDim.x)
#include "args.h"

extern "C" __global__ void dnk_cast(CastArgs a) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= a.count) return;
    stx(a.dst, (int)a.dst_dtype, idx, ldx(a.src, (int)a.src_dtype, idx));
}
