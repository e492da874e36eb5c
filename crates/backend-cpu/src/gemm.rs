//! The matrix products of the chunked extend: [`mm`], a single-threaded
//! strided wrapper over the `gemm` crate (the extend parallelises over
//! (sequence, key head) tasks, never inside a product), and [`lower_mm`], the
//! triangular product the extend falls back to when a dense product would
//! spread a non-finite value to earlier tokens.

/// `dst[m, n] = alpha * dst + beta * lhs[m, k] * rhs[k, n]` (dst row-major with
/// row stride `dst_rs`; lhs/rhs given by row and column strides), single-threaded.
///
/// # Safety
/// Every addressed element must be in bounds; dst must not overlap lhs or rhs.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    read_dst: bool,
    alpha: f32,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    beta: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `dst[i, :] (+)= sum_{j <= i} a[i, j] b[j, :]` over `m` rows of width `n`
/// (`a` with row stride `lda`, `b` and `dst` dense): the product with a
/// lower-triangular `a` that never touches `b`'s rows below row `i` for row `i`.
pub(crate) fn lower_mm(m: usize, n: usize, a: &[f32], lda: usize, b: &[f32], dst: &mut [f32], accumulate: bool) {
    for i in 0..m {
        let row = &mut dst[i * n..(i + 1) * n];
        if !accumulate {
            row.fill(0.0);
        }
        for j in 0..=i {
            let w = a[i * lda + j];
            row.iter_mut().zip(&b[j * n..(j + 1) * n]).for_each(|(d, x)| *d += w * x);
        }
    }
}
