//! Element conversions and reductions written so the compiler vectorises
//! them, plus the run-time CPU feature check the kernels dispatch on. The
//! AVX2 and portable paths compute bitwise the same results (no FMA
//! contraction; reductions use the same fixed 8-lane order on every path).

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

/// A recurrent-state element: f32 or bf16, with branch-free conversions.
pub(crate) trait StateElem: deltanet_core::Element {
    /// Narrower than f32 (rounded at every chunk end / step).
    const NARROW: bool;
    /// Widens to f32 (exact).
    fn ld(self) -> f32;
    /// Rounds to nearest even (NaN stays NaN), like `half`.
    fn st(x: f32) -> Self;
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
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let nan = ((b >> 16) as u16) | 0x40;
        bf16::from_bits(if x.is_nan() { nan } else { rounded })
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
    fn bf16_rounding_matches_half() {
        let mut x = 0x0123_4567u32;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            let f = f32::from_bits(x);
            let (a, b) = (<bf16 as StateElem>::st(f), bf16::from_f32(f));
            if f.is_nan() {
                assert!(a.is_nan());
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{f:e}");
            }
            assert_eq!(a.ld().to_bits(), a.to_f32().to_bits());
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
