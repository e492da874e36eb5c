//! The two GDN operator calls, over the views of one delta-rule operation:
//! `aclnnChunkGatedDeltaRule` (extend: packed sequences from a gathered
//! initial state to a final state) and `aclnnRecurrentGatedDeltaRule`
//! (decode, verify: in place on a state table through `ssmStateIndices`).

use crate::api::{AclDType, OpCall};
use crate::elementwise::delta_inputs;
use crate::safe::{DeviceBuffer, NpuContext};
use crate::view::View;
use deltanet_core::{DeltaIo, Result};

/// The tensors of one delta-rule operation as the GDN operators take them
/// (q, k L2-normalised and bf16; beta bf16), and the temporaries behind them.
pub(crate) struct DeltaViews {
    pub(crate) q: View,
    pub(crate) k: View,
    pub(crate) v: View,
    pub(crate) beta: View,
    pub(crate) g: View,
    pub(crate) o: View,
    pub(crate) scale: f32,
    _keep: Vec<DeviceBuffer>,
}

impl DeltaViews {
    /// Normalises and casts what the operators need (issued on the stream).
    pub(crate) fn new(ctx: &NpuContext, io: &DeltaIo<'_>) -> Result<Self> {
        let (keep, q, k, beta) = delta_inputs(ctx, io)?;
        Ok(DeltaViews {
            q,
            k,
            v: View::of(io.v.addr(), io.v.meta()),
            beta,
            g: View::of(io.g.addr(), io.g.meta()),
            o: View::of(io.o.addr(), io.o.meta()),
            scale: io.params.scale,
            _keep: keep,
        })
    }
}

/// One `aclnnChunkGatedDeltaRule` call over packed tokens `t0..t0+n`: `lens`
/// tokens per sequence, from `initial` (`[B, HV, V, K]`) to `fin`.
pub(crate) fn chunk(ctx: &NpuContext, x: &DeltaViews, t0: usize, lens: &[i32], initial: &View, fin: &View) -> Result<()> {
    let n: usize = lens.iter().map(|&l| l as usize).sum();
    let lens_b = ctx.upload_i32(lens)?;
    let tq = ctx.tensor(&x.q.rows(t0, n).desc())?;
    let tk = ctx.tensor(&x.k.rows(t0, n).desc())?;
    let tv = ctx.tensor(&x.v.rows(t0, n).desc())?;
    let tb = ctx.tensor(&x.beta.rows(t0, n).desc())?;
    let tg = ctx.tensor(&x.g.rows(t0, n).desc())?;
    let to = ctx.tensor(&x.o.rows(t0, n).desc())?;
    let (ti, tf) = (ctx.tensor(&initial.desc())?, ctx.tensor(&fin.desc())?);
    let tl = ctx.tensor_of(&lens_b, AclDType::I32, &[lens.len()])?;
    Ok(ctx.run(&OpCall::ChunkGatedDeltaRule {
        query: tq.h(),
        key: tk.h(),
        value: tv.h(),
        beta: tb.h(),
        initial_state: ti.h(),
        actual_seq_lengths: tl.h(),
        g: Some(tg.h()),
        scale: x.scale,
        out: to.h(),
        final_state: tf.h(),
    })?)
}

/// One `aclnnRecurrentGatedDeltaRule` call over packed tokens `t0..`, in
/// place on `state`: `lens` tokens per sequence, token `t`'s state at
/// `indices[t]`, each sequence starting from `indices[start + accepted - 1]`.
pub(crate) fn recurrent(
    ctx: &NpuContext,
    x: &DeltaViews,
    state: &View,
    t0: usize,
    lens: &[i32],
    indices: &[i32],
    accepted: &[i32],
) -> Result<()> {
    let n: usize = lens.iter().map(|&l| l as usize).sum();
    let (lens_b, idx_b, acc_b) = (ctx.upload_i32(lens)?, ctx.upload_i32(indices)?, ctx.upload_i32(accepted)?);
    let tq = ctx.tensor(&x.q.rows(t0, n).desc())?;
    let tk = ctx.tensor(&x.k.rows(t0, n).desc())?;
    let tv = ctx.tensor(&x.v.rows(t0, n).desc())?;
    let tb = ctx.tensor(&x.beta.rows(t0, n).desc())?;
    let tg = ctx.tensor(&x.g.rows(t0, n).desc())?;
    let to = ctx.tensor(&x.o.rows(t0, n).desc())?;
    let ts = ctx.tensor(&state.desc())?;
    let tl = ctx.tensor_of(&lens_b, AclDType::I32, &[lens.len()])?;
    let ti = ctx.tensor_of(&idx_b, AclDType::I32, &[indices.len()])?;
    let ta = ctx.tensor_of(&acc_b, AclDType::I32, &[accepted.len()])?;
    Ok(ctx.run(&OpCall::RecurrentGatedDeltaRule {
        query: tq.h(),
        key: tk.h(),
        value: tv.h(),
        beta: tb.h(),
        state: ts.h(),
        actual_seq_lengths: tl.h(),
        ssm_state_indices: ti.h(),
        g: Some(tg.h()),
        gk: None,
        num_accepted_tokens: ta.h(),
        scale: x.scale,
        out: to.h(),
    })?)
}
