//! Per-thread scratch vectors only ever grow, so a kernel allocates nothing
//! per call once its thread has run the largest shape.

/// Grows `v` with zeros to at least `n` elements (never shrinks it).
pub(crate) fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}
