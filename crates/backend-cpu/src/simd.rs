//! Element conversions and reductions written so the compiler vectorises
//! them, plus the run-time CPU feature check the kernels dispatch on (the
//! hand-written bf16 row updates are in `bf16_rows`). The
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
    /// [`StateElem::update_row`] of `kv.len()` rows of `u.len()` elements,
    /// `stride` elements apart from `st`, row `kk` with `a = kv[kk]`;
    /// `before_row` runs before each row (the caller's prefetch). Same bits
    /// as row-by-row [`StateElem::update_row`].
    ///
    /// # Safety
    /// `st + kk * stride ..+ u.len()` is writable for every `kk < kv.len()`
    /// and nothing else refers to it meanwhile.
    #[inline(always)]
    unsafe fn update_rows(st: *mut Self, stride: usize, kv: &[f32], d: f32, u: &[f32], mut before_row: impl FnMut()) {
        for (kk, &a) in kv.iter().enumerate() {
            before_row();
            // SAFETY: row kk is writable and unaliased (the caller's contract).
            let row = unsafe { std::slice::from_raw_parts_mut(st.add(kk * stride), u.len()) };
            Self::update_row(row, d, a, u);
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
        crate::bf16_rows::update_row(row, d, a, u)
    }

    #[inline(always)]
    unsafe fn update_rows(st: *mut Self, stride: usize, kv: &[f32], d: f32, u: &[f32], before_row: impl FnMut()) {
        // SAFETY: the caller's contract, passed on.
        unsafe { crate::bf16_rows::update_rows(st, stride, kv, d, u, before_row) }
    }
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
