//! The fused gate of a Gated DeltaNet layer: the decay `g` and the write
//! strength `beta` of every (token, value head) from the projections `a`, `b`
//! and the layer's `A_log`, `dt_bias` (the arithmetic lane by lane in
//! [`crate::vmath`]).

use crate::io::{In, Out};
use crate::scratch::grow;
use crate::vmath;
use std::cell::RefCell;

/// Per-thread gate scratch: `-exp(A_log)`, `dt_bias` and one token's rows.
#[derive(Default)]
struct GateScratch {
    neg_a: Vec<f32>,
    dt_bias: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static GATE: RefCell<GateScratch> = RefCell::new(GateScratch::default());
}

/// `g = -exp(A_log) * softplus(a + dt_bias)` (threshold 20), `beta = sigmoid(b)`, over `[T, HV]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate(a: &In<'_>, b: &In<'_>, a_log: &In<'_>, dt_bias: &In<'_>, g: &Out, beta: &Out, tokens: usize, hv: usize) {
    GATE.with(|s| {
        let s = &mut *s.borrow_mut();
        for v in [&mut s.neg_a, &mut s.dt_bias, &mut s.a, &mut s.b] {
            grow(v, hv);
        }
        let (al, db, ar, br) = (&mut s.neg_a[..hv], &mut s.dt_bias[..hv], &mut s.a[..hv], &mut s.b[..hv]);
        a_log.row(0, al);
        dt_bias.row(0, db);
        vmath::exp_in_place(al);
        al.iter_mut().for_each(|x| *x = -*x);
        for t in 0..tokens {
            a.row(a.off2(t, 0), ar);
            b.row(b.off2(t, 0), br);
            vmath::gate_row(ar, br, al, db);
            // SAFETY: single-threaded; row t of each output.
            unsafe {
                g.store(g.off2(t, 0), ar);
                beta.store(beta.off2(t, 0), br);
            }
        }
    })
}
