//! One head's recurrent state between the pool (layout K-major or V-major,
//! element f32 or bf16) and the extend's K-major f32 working copy: the only
//! place the extend converts layout or element type, once on load and once
//! per store.

use crate::simd::StateElem;
use deltanet_core::LayoutKind;

/// Loads one head's state (layout `kind`, element `E`) into K-major f32 `dst`.
///
/// # Safety
/// `src` points to `k*v` readable elements.
pub(crate) unsafe fn load_state<E: StateElem>(kind: LayoutKind, src: *const E, k: usize, v: usize, dst: &mut [f32]) {
    // SAFETY: the caller guarantees k*v readable elements.
    let s = unsafe { std::slice::from_raw_parts(src, k * v) };
    match kind {
        LayoutKind::KMajor => dst.iter_mut().zip(s).for_each(|(d, x)| *d = x.ld()),
        LayoutKind::VMajor => {
            for (vv, row) in s.chunks_exact(k).enumerate() {
                for (kk, x) in row.iter().enumerate() {
                    dst[kk * v + vv] = x.ld();
                }
            }
        }
    }
}

/// Stores K-major f32 `src` as one head's state in layout `kind`, element `E`.
///
/// # Safety
/// `dst` points to `k*v` writable elements nobody else touches during the call.
pub(crate) unsafe fn store_state<E: StateElem>(kind: LayoutKind, src: &[f32], k: usize, v: usize, dst: *mut E) {
    // SAFETY: the caller guarantees k*v exclusive writable elements.
    let d = unsafe { std::slice::from_raw_parts_mut(dst, k * v) };
    match kind {
        LayoutKind::KMajor => d.iter_mut().zip(src).for_each(|(d, x)| *d = E::st(*x)),
        LayoutKind::VMajor => {
            for (vv, row) in d.chunks_exact_mut(k).enumerate() {
                for (kk, x) in row.iter_mut().enumerate() {
                    *x = E::st(src[kk * v + vv]);
                }
            }
        }
    }
}
