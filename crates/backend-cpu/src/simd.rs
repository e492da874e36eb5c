//! Element conversions and reductions written so the compiler vectorises
//! them, plus the run-time CPU feature check the kernels dispatch on. The
//! AVX512_BF16, AVX-512, AVX2 and portable paths compute bitwise the same
//! results (the state update contracts to a fused multiply-add on every path,
//! `mul_add`; reductions use the same fixed 8-lane order on every path; the
//! bf16 rounding flushes f32 denormals to signed zero on every path, as the
//! AVX512_BF16 conversion does).

use half::bf16;
use std::sync::OnceLock;

/// Whether the CPU has AVX2 and FMA (checked once).
#[inline]
pub(crate) fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the CPU has AVX-512F as well as AVX2 and FMA (checked once).
#[inline]
pub(crate) fn has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx2() && std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the CPU has AVX512_BF16 as well as AVX-512F, AVX2 and FMA (checked once).
#[inline]
pub(crate) fn has_avx512bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx512() && std::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A recurrent-state element: f32 or bf16, with branch-free conversions.
pub(crate) trait StateElem: deltanet_core::Element {
    /// Narrower than f32 (rounded at every chunk end / step).
    const NARROW: bool;
    /// Widens to f32 (exact).
    fn ld(self) -> f32;
    /// Rounds to nearest even (NaN stays NaN), like `half`, except that a
    /// narrow element flushes f32 denormal inputs to signed zero (what the
    /// AVX512_BF16 conversion does; every path does the same).
    fn st(x: f32) -> Self;
    /// The decode update of one state row, in place:
    /// `row[j] = st(fma(d, ld(row[j]), a * u[j]))` — the same contraction in
    /// decode, verify and the portable path (`mul_add` is fused everywhere),
    /// so decode == verify stays bitwise.
    #[inline(always)]
    fn update_row(row: &mut [Self], d: f32, a: f32, u: &[f32]) {
        for (x, &u) in row.iter_mut().zip(u) {
            *x = Self::st(d.mul_add(x.ld(), a * u));
        }
    }
}

impl StateElem for f32 {
    const NARROW: bool = false;
    #[inline(always)]
    fn ld(self) -> f32 {
        self
    }
    #[inline(always)]
    fn st(x: f32) -> Self {
        x
    }
}

impl StateElem for bf16 {
    const NARROW: bool = true;
    #[inline(always)]
    fn ld(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn st(x: f32) -> Self {
        let b = x.to_bits();
        // a denormal (exponent 0) flushes to signed zero, as `vcvtne2ps2bf16` does
        let b = if b & 0x7f80_0000 == 0 { b & 0x8000_0000 } else { b };
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let nan = ((b >> 16) as u16) | 0x40;
        bf16::from_bits(if x.is_nan() { nan } else { rounded })
    }

    #[inline(always)]
    fn update_row(row: &mut [Self], d: f32, a: f32, u: &[f32]) {
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
            *x = Self::st(d.mul_add(x.ld(), a * u));
        }
    }
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
    let (abs_mask, inf, quiet) = (_mm256_set1_epi32(0x7fff_ffff), _mm256_set1_epi32(0x7f80_0000), _mm256_set1_epi32(0x0040_0000));
    let (half, one, zero) = (_mm256_set1_epi32(0x7fff), _mm256_set1_epi32(1), _mm256_setzero_si256());
    let round = |x: __m256| -> __m256i {
        let b = _mm256_castps_si256(x);
        // exponent 0: keep only the sign
        let den = _mm256_cmpeq_epi32(_mm256_and_si256(b, inf), zero);
        let b = _mm256_andnot_si256(_mm256_and_si256(den, abs_mask), b);
        let nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, abs_mask), inf);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), one);
        let add = _mm256_andnot_si256(nan, _mm256_add_epi32(half, lsb));
        let b = _mm256_or_si256(b, _mm256_and_si256(nan, quiet));
        _mm256_srli_epi32::<16>(_mm256_add_epi32(b, add))
    };
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

/// Two dot products `(x.a, x.b)` over 8 interleaved lanes (fixed order).
#[inline(always)]
pub(crate) fn dot2(x: &[f32], a: &[f32], b: &[f32]) -> (f32, f32) {
    let n = x.len() / 8 * 8;
    let (mut sa, mut sb) = ([0f32; 8], [0f32; 8]);
    for ((xc, ac), bc) in x[..n].chunks_exact(8).zip(a[..n].chunks_exact(8)).zip(b[..n].chunks_exact(8)) {
        for l in 0..8 {
            sa[l] += xc[l] * ac[l];
            sb[l] += xc[l] * bc[l];
        }
    }
    let (mut ra, mut rb) = (0.0, 0.0);
    for l in 0..8 {
        ra += sa[l];
        rb += sb[l];
    }
    for i in n..x.len() {
        ra += x[i] * a[i];
        rb += x[i] * b[i];
    }
    (ra, rb)
}

/// `x . a` over 8 interleaved lanes (fixed order).
#[inline(always)]
pub(crate) fn dot(x: &[f32], a: &[f32]) -> f32 {
    let n = x.len() / 8 * 8;
    let mut s = [0f32; 8];
    for (xc, ac) in x[..n].chunks_exact(8).zip(a[..n].chunks_exact(8)) {
        for l in 0..8 {
            s[l] += xc[l] * ac[l];
        }
    }
    let mut r = 0.0;
    for v in s {
        r += v;
    }
    for i in n..x.len() {
        r += x[i] * a[i];
    }
    r
}

/// Stores `src` at `dst` with non-temporal (cache-bypassing) stores when `dst`
/// is 16-byte aligned and the length a multiple of 4; returns false (storing
/// nothing) otherwise. Used for speculative scratch states that are written
/// once and read, if at all, by a later commit: no read-for-ownership traffic.
/// Call [`store_fence`] before anyone else reads the memory.
///
/// # Safety
/// `dst` points to `src.len()` writable f32 nobody else touches meanwhile.
#[inline(always)]
pub(crate) unsafe fn stream_f32(dst: *mut f32, src: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        if !(dst as usize).is_multiple_of(16) || !src.len().is_multiple_of(4) {
            return false;
        }
        for (i, c) in src.chunks_exact(4).enumerate() {
            // SAFETY: SSE is part of x86_64; `dst + 4i` is 16-byte aligned and in range.
            unsafe { _mm_stream_ps(dst.add(4 * i), _mm_loadu_ps(c.as_ptr())) };
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, src);
        false
    }
}

/// Software prefetch (into L2) of the state block the next task on this
/// thread reads, spread over the current task's arithmetic so that block's
/// memory latency overlaps it. A decode step is two short passes per head;
/// without this every head starts with a stall the hardware prefetcher does
/// not hide (it stops at page boundaries). The address is never dereferenced.
pub(crate) struct Prefetch {
    next: usize,
    end: usize,
    per_call: usize,
}

impl Prefetch {
    /// Prefetches `bytes` from `block` over `calls` calls of [`Prefetch::step`].
    pub(crate) fn new<T>(block: *const T, bytes: usize, calls: usize) -> Prefetch {
        let next = block as usize;
        let lines = bytes.div_ceil(64);
        Prefetch { next, end: if next == 0 { 0 } else { next + bytes }, per_call: lines.div_ceil(calls.max(1)) }
    }

    /// Issues the next share of prefetches.
    #[inline(always)]
    pub(crate) fn step(&mut self) {
        for _ in 0..self.per_call {
            if self.next >= self.end {
                return;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint; it never faults and reads nothing into the program.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                _mm_prefetch::<_MM_HINT_T1>(self.next as *const i8)
            };
            self.next += 64;
        }
    }
}

/// Orders earlier non-temporal stores before later loads and stores.
#[inline(always)]
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64; a fence has no memory-safety preconditions.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half_except_denormals_flush_to_zero() {
        let mut x = 0x0123_4567u32;
        let mut normal = 0;
        for i in 0..200_000u32 {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            // every other value a denormal or a zero (exponent 0), with either sign
            let bits = if i % 2 == 0 { x } else { x & 0x807f_ffff };
            let f = f32::from_bits(bits);
            let (a, b) = (<bf16 as StateElem>::st(f), bf16::from_f32(f));
            if f.is_nan() {
                assert!(a.is_nan());
                assert_eq!(a.to_bits(), ((bits >> 16) as u16) | 0x40, "{bits:08x}: top bits kept, quiet");
            } else if bits & 0x7f80_0000 == 0 {
                // a denormal flushes to zero of its sign (half would round it)
                assert_eq!(a.to_bits(), ((bits >> 16) & 0x8000) as u16, "{bits:08x}");
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{f:e}");
                normal += 1;
            }
            assert_eq!(a.ld().to_bits(), a.to_f32().to_bits());
        }
        assert!(normal > 90_000, "{normal}");
        // the smallest normal stays; the largest denormal and ties around 1 as half rounds them
        for (bits, want) in
            [(0x0080_0000u32, 0x0080u16), (0x807f_ffff, 0x8000), (0x0000_0001, 0x0000), (0x3f80_8000, 0x3f80), (0x3f81_8000, 0x3f82)]
        {
            assert_eq!(<bf16 as StateElem>::st(f32::from_bits(bits)).to_bits(), want, "{bits:08x}");
        }
    }

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

    #[test]
    fn dots_are_dots() {
        let x: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let a: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let b = vec![2.0f32; 19];
        let r: f64 = x.iter().zip(&a).map(|(p, q)| (*p as f64) * (*q as f64)).sum();
        assert!((dot(&x, &a) as f64 - r).abs() < 1e-4);
        let (d1, d2) = dot2(&x, &a, &b);
        assert_eq!(d1, dot(&x, &a));
        assert_eq!(d2, x.iter().sum::<f32>() * 2.0);
    }
}
