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

    /// Hints the CPU to fetch the inputs of token `t` for value head `h` (its
    /// q, k and v rows, g and beta), which a one-token step reads first: a
    /// decode task's state streams through the caches and evicts them, and a
    /// miss on each row at the start of every task is a stall the state
    /// prefetch does not cover. No effect on results.
    #[inline]
    pub(crate) fn prefetch_step(&self, t: usize, h: usize) {
        let (kh, kd, vd) = (self.dims.key_head(h), self.dims.head_k_dim, self.dims.head_v_dim);
        self.q.prefetch(self.q.off2(t, kh), kd);
        self.k.prefetch(self.k.off2(t, kh), kd);
        self.v.prefetch(self.v.off2(t, h), vd);
        self.g.prefetch(self.g.off2(t, h), 1);
        self.beta.prefetch(self.beta.off2(t, h), 1);
    }
}

/// `x / sqrt(sum(x^2) + eps)` in f32.
#[inline]
pub(crate) fn l2norm(x: &mut [f32]) {
    let ss = simd::dot(x, x);
    let inv = 1.0 / (ss + L2NORM_EPS).sqrt();
    x.iter_mut().for_each(|a| *a *= inv);
}
