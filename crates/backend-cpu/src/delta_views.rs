//! The tensors of one delta-rule call ([`deltanet_core::DeltaIo`]) as host
//! views, and the q/k row load (with the optional L2 normalisation) that the
//! chunked extend and the one-token steps share, so both read a token's q and
//! k with the same bits.

use crate::io::{In, Out};
use crate::simd;
use deltanet_core::{DeltaParams, ModelDims, L2NORM_EPS};

/// The tensors of one delta-rule call, as host views.
#[derive(Clone, Copy)]
pub(crate) struct DeltaViews<'a> {
    pub q: In<'a>,
    pub k: In<'a>,
    pub v: In<'a>,
    pub g: In<'a>,
    pub beta: In<'a>,
    pub o: Out,
    pub dims: ModelDims,
    pub params: DeltaParams,
}

impl DeltaViews<'_> {
    /// Loads the (optionally L2-normalised) q and k rows of token `t` for value head `h`.
    #[inline]
    pub(crate) fn load_qk(&self, t: usize, h: usize, q: &mut [f32], k: &mut [f32]) {
        let kh = self.dims.key_head(h);
        self.q.row(self.q.off2(t, kh), q);
        self.k.row(self.k.off2(t, kh), k);
        if self.params.use_qk_l2norm {
            l2norm(q);
            l2norm(k);
        }
    }
}

/// `x / sqrt(sum(x^2) + eps)` in f32.
#[inline]
pub(crate) fn l2norm(x: &mut [f32]) {
    let ss = simd::dot(x, x);
    let inv = 1.0 / (ss + L2NORM_EPS).sqrt();
    x.iter_mut().for_each(|a| *a *= inv);
}
