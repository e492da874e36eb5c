//! The bf16 state-row update of a decode step, hand-written per x86 path
//! (AVX2, AVX-512, AVX512_BF16): the compiler's version of the rounding
//! made a bf16 decode slower than an f32 one. Every path gives the bits of
//! [`StateElem::st`] of the fused multiply-add `fma(d, ld(x), a * u)`.

use crate::simd::{has_avx2, has_avx512, has_avx512bf16, StateElem};
use half::bf16;

/// [`StateElem::update_row`] for bf16: the widest path this CPU has, the
/// portable rounding for the tail.
#[inline(always)]
pub(crate) fn update_row(row: &mut [bf16], d: f32, a: f32, u: &[f32]) {
    let n = row.len().min(u.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx512bf16() {
        // SAFETY: AVX512_BF16 and AVX-512F are present; the ranges are the slices'.
        done = unsafe { update_row_bf16_avx512bf16(&mut row[..n], d, a, &u[..n]) };
    } else if has_avx512() {
        // SAFETY: AVX-512F is present; the ranges are the slices'.
        done = unsafe { update_row_bf16_avx512(&mut row[..n], d, a, &u[..n]) };
    } else if has_avx2() {
        // SAFETY: AVX2 and FMA are present; the ranges are the slices'.
        done = unsafe { update_row_bf16_avx2(&mut row[..n], d, a, &u[..n]) };
    }
    for (x, &u) in row[done..n].iter_mut().zip(&u[done..n]) {
        *x = <bf16 as StateElem>::st(d.mul_add(x.ld(), a * u));
    }
}

/// [`StateElem::update_rows`] for bf16: the even/odd AVX2 path where it is
/// the widest this CPU has, else row by row.
///
/// # Safety
/// As [`StateElem::update_rows`].
#[inline(always)]
pub(crate) unsafe fn update_rows(st: *mut bf16, stride: usize, kv: &[f32], d: f32, u: &[f32], mut before_row: impl FnMut()) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && !has_avx512() && u.len() <= SPLIT_MAX {
        // SAFETY: AVX2 and FMA are present; the rows are the caller's contract.
        return unsafe { update_rows_bf16_avx2(st, stride, kv, d, u, before_row) };
    }
    for (kk, &a) in kv.iter().enumerate() {
        before_row();
        // SAFETY: row kk is writable and unaliased (the caller's contract).
        let row = unsafe { std::slice::from_raw_parts_mut(st.add(kk * stride), u.len()) };
        update_row(row, d, a, u);
    }
}

/// The widest row [`update_rows_bf16_avx2`] takes (its split copy of `u` is on the stack).
const SPLIT_MAX: usize = 256;

/// [`StateElem::update_rows`] for bf16 with AVX2: 16 state elements are one
/// 256-bit load whose 32-bit lanes hold an even element in the low half and
/// an odd one in the high half, so a shift and a mask widen them (the even
/// and the odd elements as two f32 vectors) and a shift, a mask and an OR
/// narrow them again, with `u` split into the same even/odd order once for
/// all rows. The rounding takes the short integer form (round to nearest
/// even by adding `0x7fff` plus the kept lsb) when all 16 results are normal
/// or infinite, one compare per vector; zeros, denormals and NaN take the
/// full form of [`update_row_bf16_avx2`]. Same bits as [`StateElem::st`]
/// everywhere; the per-16 cost went from ~42 operations to ~25.
///
/// # Safety
/// The CPU has AVX2 and FMA; `u.len() <= SPLIT_MAX`; the rows are as in
/// [`StateElem::update_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_rows_bf16_avx2(st: *mut bf16, stride: usize, kv: &[f32], d: f32, u: &[f32], mut before_row: impl FnMut()) {
    use std::arch::x86_64::*;
    let w = u.len();
    let n = w / 16 * 16;
    // u per 16 columns as [8 even, 8 odd]
    let mut split = [0f32; SPLIT_MAX];
    for (c, s) in u[..n].chunks_exact(16).zip(split.chunks_exact_mut(16)) {
        for l in 0..8 {
            s[l] = c[2 * l];
            s[8 + l] = c[2 * l + 1];
        }
    }
    let vd = _mm256_set1_ps(d);
    let (abs_mask, min_normal) = (_mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)), _mm256_set1_ps(f32::MIN_POSITIVE));
    let (high, half, one) = (_mm256_set1_epi32(0xffff_0000_u32 as i32), _mm256_set1_epi32(0x7fff), _mm256_set1_epi32(1));
    let all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    // nearest even, unshifted (the bf16 in the high half): exact for normal and infinite inputs
    let short = |b: __m256i| _mm256_add_epi32(b, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32::<16>(b), one)));
    for (kk, &a) in kv.iter().enumerate() {
        before_row();
        let va = _mm256_set1_ps(a);
        // SAFETY: row kk, columns 0..w, is writable and unaliased (the caller's contract).
        let rp = unsafe { st.add(kk * stride) } as *mut u16;
        for i in (0..n).step_by(16) {
            // SAFETY: columns i..i+16 of the row and of `split` are in range (i + 16 <= n <= w).
            unsafe {
                let old = _mm256_loadu_si256(rp.add(i) as *const __m256i);
                let xe = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(old));
                let xo = _mm256_castsi256_ps(_mm256_and_si256(old, high));
                let ye = _mm256_fmadd_ps(vd, xe, _mm256_mul_ps(va, _mm256_loadu_ps(split.as_ptr().add(i))));
                let yo = _mm256_fmadd_ps(vd, xo, _mm256_mul_ps(va, _mm256_loadu_ps(split.as_ptr().add(i + 8))));
                let ok = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_and_ps(ye, abs_mask), min_normal),
                    _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_and_ps(yo, abs_mask), min_normal),
                );
                let (be, bo) = if _mm256_testc_ps(ok, all) != 0 {
                    (short(_mm256_castps_si256(ye)), short(_mm256_castps_si256(yo)))
                } else {
                    (round_full_avx2(ye), round_full_avx2(yo))
                };
                let r = _mm256_or_si256(_mm256_srli_epi32::<16>(be), _mm256_and_si256(bo, high));
                _mm256_storeu_si256(rp.add(i) as *mut __m256i, r);
            }
        }
        // SAFETY: as above; the tail columns n..w.
        let row = unsafe { std::slice::from_raw_parts_mut(st.add(kk * stride + n), w - n) };
        for (x, &u) in row.iter_mut().zip(&u[n..]) {
            *x = <half::bf16 as StateElem>::st(d.mul_add(x.ld(), a * u));
        }
    }
}

/// [`StateElem::st`] of 8 f32 with AVX2, unshifted: the bf16 bits in the
/// high half of each 32-bit lane (exponent 0 flushed to signed zero, NaN
/// made quiet with its top bits kept, everything else rounded to nearest even).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn round_full_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let (abs_mask, inf, quiet) = (_mm256_set1_epi32(0x7fff_ffff), _mm256_set1_epi32(0x7f80_0000), _mm256_set1_epi32(0x0040_0000));
    let (half, one, zero) = (_mm256_set1_epi32(0x7fff), _mm256_set1_epi32(1), _mm256_setzero_si256());
    let b = _mm256_castps_si256(x);
    // exponent 0: keep only the sign
    let den = _mm256_cmpeq_epi32(_mm256_and_si256(b, inf), zero);
    let b = _mm256_andnot_si256(_mm256_and_si256(den, abs_mask), b);
    let nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, abs_mask), inf);
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), one);
    let add = _mm256_andnot_si256(nan, _mm256_add_epi32(half, lsb));
    let b = _mm256_or_si256(b, _mm256_and_si256(nan, quiet));
    _mm256_add_epi32(b, add)
}

/// [`StateElem::update_row`] for bf16, 16 elements at a time: the compiler's
/// version of the rounding narrows through 128-bit halves and reloads its
/// constants every iteration, which made a bf16 decode no faster than an f32
/// one. Same bits as [`StateElem::st`]: NaN keeps its top bits with the quiet
/// bit set, a denormal flushes to signed zero, everything else rounds to
/// nearest even. Returns the elements done
/// (a multiple of 16); the caller finishes the tail.
///
/// # Safety
/// The CPU has AVX2 and FMA; `u.len() >= row.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_row_bf16_avx2(row: &mut [bf16], d: f32, a: f32, u: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = row.len() / 16 * 16;
    let (vd, va) = (_mm256_set1_ps(d), _mm256_set1_ps(a));
    let round = |x: __m256| _mm256_srli_epi32::<16>(round_full_avx2(x));
    let (rp, up) = (row.as_mut_ptr() as *mut u16, u.as_ptr());
    for i in (0..n).step_by(16) {
        // SAFETY: elements i..i+16 are in both slices (i + 16 <= n <= len).
        unsafe {
            let old = _mm256_loadu_si256(rp.add(i) as *const __m256i);
            let lo = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(old))));
            let hi = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm256_extracti128_si256::<1>(old))));
            let lo = _mm256_fmadd_ps(vd, lo, _mm256_mul_ps(va, _mm256_loadu_ps(up.add(i))));
            let hi = _mm256_fmadd_ps(vd, hi, _mm256_mul_ps(va, _mm256_loadu_ps(up.add(i + 8))));
            // packus interleaves 128-bit lanes: [lo0-3 hi0-3 lo4-7 hi4-7]; permute back
            let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(round(lo), round(hi)));
            _mm256_storeu_si256(rp.add(i) as *mut __m256i, packed);
        }
    }
    n
}

/// [`update_row_bf16_avx2`] with AVX-512, 16 elements per step: the same
/// operations (fused multiply-add, then the integer rounding with denormals
/// flushed and NaN made quiet), so the same bits. Returns the elements done
/// (a multiple of 16).
///
/// # Safety
/// The CPU has AVX-512F; `u.len() >= row.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn update_row_bf16_avx512(row: &mut [bf16], d: f32, a: f32, u: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = row.len() / 16 * 16;
    let (vd, va) = (_mm512_set1_ps(d), _mm512_set1_ps(a));
    let (abs_mask, inf, quiet) = (_mm512_set1_epi32(0x7fff_ffff), _mm512_set1_epi32(0x7f80_0000), _mm512_set1_epi32(0x0040_0000));
    let (half, one, sign) = (_mm512_set1_epi32(0x7fff), _mm512_set1_epi32(1), _mm512_set1_epi32(i32::MIN));
    let (rp, up) = (row.as_mut_ptr() as *mut u16, u.as_ptr());
    for i in (0..n).step_by(16) {
        // SAFETY: elements i..i+16 are in both slices (i + 16 <= n <= len).
        unsafe {
            let b = _mm512_castps_si512(update16_avx512(rp.add(i), up.add(i), vd, va));
            // exponent 0: keep only the sign
            let den = _mm512_testn_epi32_mask(b, inf);
            let b = _mm512_mask_and_epi32(b, den, b, sign);
            let nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(b, abs_mask), inf);
            let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), one);
            let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(half, lsb)));
            let quieted = _mm512_srli_epi32::<16>(_mm512_or_si512(b, quiet));
            let r = _mm512_mask_blend_epi32(nan, rounded, quieted);
            _mm256_storeu_si256(rp.add(i) as *mut __m256i, _mm512_cvtepi32_epi16(r));
        }
    }
    n
}

/// The unrounded update `fma(d, ld(row[j]), a * u[j])` of the 16 bf16 state
/// elements at `row` (widened exactly) with the 16 f32 at `u`, `vd`/`va` being
/// `d`/`a` broadcast: what both AVX-512 paths then round.
///
/// # Safety
/// The CPU has AVX-512F; 16 elements are readable at each pointer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn update16_avx512(
    row: *const u16,
    u: *const f32,
    vd: std::arch::x86_64::__m512,
    va: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: 16 elements readable at each pointer (the caller's contract).
    let (old, u) = unsafe { (_mm256_loadu_si256(row as *const __m256i), _mm512_loadu_ps(u)) };
    let x = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(old)));
    _mm512_fmadd_ps(vd, x, _mm512_mul_ps(va, u))
}

/// [`update_row_bf16_avx512`] with AVX512_BF16's conversion: the same fused
/// multiply-add, then `vcvtne2ps2bf16` rounds 32 results to nearest even in
/// one instruction (denormal inputs flushed to signed zero, NaN made quiet
/// with its top bits kept: exactly [`StateElem::st`]), where the integer
/// rounding took about ten operations per 16 lanes. Returns the elements done
/// (a multiple of 16).
///
/// # Safety
/// The CPU has AVX512_BF16 and AVX-512F; `u.len() >= row.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f")]
#[inline]
unsafe fn update_row_bf16_avx512bf16(row: &mut [bf16], d: f32, a: f32, u: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = row.len() / 16 * 16;
    let (vd, va) = (_mm512_set1_ps(d), _mm512_set1_ps(a));
    let (rp, up) = (row.as_mut_ptr() as *mut u16, u.as_ptr());
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: elements i..i+32 are in both slices (i + 32 <= n <= len).
        unsafe {
            let lo = update16_avx512(rp.add(i), up.add(i), vd, va);
            let hi = update16_avx512(rp.add(i + 16), up.add(i + 16), vd, va);
            // lanes 0..16 from the second operand, 16..32 from the first
            let r = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(rp.add(i) as *mut _, r);
        }
        i += 32;
    }
    if i < n {
        // SAFETY: elements i..i+16 are in both slices (i + 16 <= n <= len).
        unsafe {
            let x = update16_avx512(rp.add(i), up.add(i), vd, va);
            let r = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x));
            _mm256_storeu_si256(rp.add(i) as *mut __m256i, r);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows and updates that hit every rounding case: random bits, NaN (quiet
    /// and signalling), infinities, zeros, denormal results, ties and carries
    /// into the exponent.
    fn update_row_cases(len: usize, next: &mut impl FnMut() -> u32) -> (Vec<bf16>, Vec<f32>) {
        let mut row: Vec<bf16> = (0..len).map(|_| bf16::from_bits((next() >> 16) as u16)).collect();
        let mut u: Vec<f32> = (0..len).map(|_| f32::from_bits(next())).collect();
        let specials = [
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::INFINITY,
            -f32::INFINITY,
            0.0,
            -0.0,
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x7f7f_ffff),
            f32::from_bits(0x0000_1234),
            f32::from_bits(0x8040_0000),
            f32::from_bits(0x0080_0000),
        ];
        for (i, v) in specials.into_iter().enumerate() {
            if i < len {
                u[i] = v;
                row[i] = bf16::from_bits(0);
            }
        }
        // a denormal row element (its decay is a denormal) and a random exponent-0 update
        for i in (specials.len()..len).step_by(5) {
            row[i] = bf16::from_bits((next() as u16) & 0x807f);
            u[i] = f32::from_bits(next() & 0x807f_ffff);
        }
        (row, u)
    }

    #[test]
    fn bf16_update_row_matches_the_scalar_rounding() {
        let mut x = 0x89ab_cdefu32;
        let mut next = || {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            x
        };
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 48, 64, 128, 131] {
            for (d, a) in [(0.75f32, 1.0f32), (0.5, 1e-3), (1.0, -2.5)] {
                let (row, u) = update_row_cases(len, &mut next);
                let want: Vec<bf16> = row.iter().zip(&u).map(|(x, &u)| <bf16 as StateElem>::st(d.mul_add(x.ld(), a * u))).collect();
                let check = |got: &[bf16], done: usize, path: &str| {
                    for (j, (g, w)) in got.iter().zip(&want).enumerate().take(done) {
                        assert_eq!(g.to_bits(), w.to_bits(), "{path}: len {len} element {j}");
                    }
                };
                // every machine path this CPU has, not only the one update_row picks
                #[cfg(target_arch = "x86_64")]
                {
                    if has_avx2() {
                        let mut r = row.clone();
                        // SAFETY: AVX2 and FMA are present; u is as long as the row.
                        let done = unsafe { update_row_bf16_avx2(&mut r, d, a, &u) };
                        assert_eq!(done, len / 16 * 16);
                        check(&r, done, "avx2");
                    }
                    if has_avx512() {
                        let mut r = row.clone();
                        // SAFETY: AVX-512F is present; u is as long as the row.
                        let done = unsafe { update_row_bf16_avx512(&mut r, d, a, &u) };
                        assert_eq!(done, len / 16 * 16);
                        check(&r, done, "avx512");
                    }
                    if has_avx512bf16() {
                        let mut r = row.clone();
                        // SAFETY: AVX512_BF16 and AVX-512F are present; u is as long as the row.
                        let done = unsafe { update_row_bf16_avx512bf16(&mut r, d, a, &u) };
                        assert_eq!(done, len / 16 * 16);
                        check(&r, done, "avx512bf16");
                    }
                }
                let mut r = row.clone();
                <bf16 as StateElem>::update_row(&mut r, d, a, &u);
                check(&r, len, "update_row");
            }
        }
    }

    /// Normal state rows and updates whose results land on, next to and
    /// between bf16 ties (with `d = 0, a = 1` the result is `u` itself), so
    /// the short rounding form runs on whole 16-column blocks; block 1 of
    /// a row wider than 32 carries one special value (the full form).
    fn normal_cases(len: usize, next: &mut impl FnMut() -> u32) -> (Vec<bf16>, Vec<f32>) {
        let normal = |r: u32| (r & 0x8000_0000) | ((100 + (r >> 8) % 60) << 23) | (r & 0x007f_0000);
        let row: Vec<bf16> = (0..len).map(|_| bf16::from_bits((normal(next()) >> 16) as u16)).collect();
        let low = [0x8000, 0x7fff, 0x8001, 0, 0xffff];
        let mut u: Vec<f32> = (0..len)
            .map(|_| {
                let r = next();
                let l = if r % 7 < 5 { low[(r % 7) as usize] } else { next() & 0xffff };
                f32::from_bits(normal(next()) | l)
            })
            .collect();
        if len > 32 {
            u[16 + next() as usize % 16] = [f32::NAN, 0.0, f32::from_bits(0x0000_8001)][next() as usize % 3];
        }
        (row, u)
    }

    #[test]
    fn bf16_update_rows_matches_the_scalar_rounding() {
        let mut x = 0x1357_9bdfu32;
        let mut next = || {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            x
        };
        for len in [1, 16, 17, 32, 48, 64, 100, 128, 256, 300] {
            for (d, a) in [(0.0f32, 1.0f32), (0.75, 1.0), (0.5, -1e-3), (1.0, 2.5)] {
                for special in [false, true] {
                    let rows = 3;
                    let stride = len + 5;
                    let mut st = vec![bf16::from_bits(0x3f80); rows * stride];
                    let mut u = Vec::new();
                    for r in 0..rows {
                        let (row, ur) = if special { update_row_cases(len, &mut next) } else { normal_cases(len, &mut next) };
                        st[r * stride..r * stride + len].copy_from_slice(&row);
                        // every row updates with the same u (the first row's)
                        if r == 0 {
                            u = ur;
                        }
                    }
                    let kv: Vec<f32> = (0..rows).map(|r| a * (1.0 + r as f32 * 0.5)).collect();
                    let mut want = st.clone();
                    for (r, &ar) in kv.iter().enumerate() {
                        for (j, x) in want[r * stride..r * stride + len].iter_mut().enumerate() {
                            *x = <bf16 as StateElem>::st(d.mul_add(x.ld(), ar * u[j]));
                        }
                    }
                    let mut calls = 0;
                    // SAFETY: rows 0..3 of `len` columns, `stride` apart, lie in `st`.
                    unsafe { <bf16 as StateElem>::update_rows(st.as_mut_ptr(), stride, &kv, d, &u, || calls += 1) };
                    assert_eq!(calls, rows);
                    for (j, (g, w)) in st.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), w.to_bits(), "len {len} d {d} a {a} special {special} element {j}");
                    }
                }
            }
        }
    }
}
