//! The two GDN operator calls, over the views of one delta-rule operation:
//! `aclnnChunkGatedDeltaRule` (extend: packed sequences from a gathered
//! initial state to a final state) and `aclnnRecurrentGatedDeltaRule`
//! (decode, verify: in place on a state table through `ssmStateIndices`).

use crate::api::{OpCall, TensorDesc};
use crate::elementwise::delta_inputs;
use crate::norm_gamma::NormGammas;
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
    pub(crate) fn new(ctx: &NpuContext, gammas: &NormGammas, io: &DeltaIo<'_>) -> Result<Self> {
        let (keep, q, k, beta) = delta_inputs(ctx, gammas, io)?;
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
/// (int32, in a step plan) tokens per sequence, from `initial`
/// (`[B, HV, V, K]`) to `fin`.
pub(crate) fn chunk(
    ctx: &NpuContext,
    x: &DeltaViews,
    (t0, n): (usize, usize),
    lens: &TensorDesc,
    initial: &View,
    fin: &View,
) -> Result<()> {
    let tq = ctx.tensor(&x.q.rows(t0, n).desc())?;
    let tk = ctx.tensor(&x.k.rows(t0, n).desc())?;
    let tv = ctx.tensor(&x.v.rows(t0, n).desc())?;
    let tb = ctx.tensor(&x.beta.rows(t0, n).desc())?;
    let tg = ctx.tensor(&x.g.rows(t0, n).desc())?;
    let to = ctx.tensor(&x.o.rows(t0, n).desc())?;
    let (ti, tf) = (ctx.tensor(&initial.desc())?, ctx.tensor(&fin.desc())?);
    let tl = ctx.tensor(lens)?;
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

/// The int32 tables of one `aclnnRecurrentGatedDeltaRule` call (slices of a step plan).
pub(crate) struct RecurrentTables {
    /// Tokens per sequence.
    pub(crate) lens: TensorDesc,
    /// Token `t`'s state block.
    pub(crate) indices: TensorDesc,
    /// Each sequence starts from `indices[start + accepted - 1]`.
    pub(crate) accepted: TensorDesc,
}

/// One `aclnnRecurrentGatedDeltaRule` call over packed tokens `t0..t0+n`, in
/// place on `state`: `lens` tokens per sequence, token `t`'s state at
/// `indices[t]`, each sequence starting from `indices[start + accepted - 1]`.
pub(crate) fn recurrent(ctx: &NpuContext, x: &DeltaViews, state: &View, (t0, n): (usize, usize), tables: &RecurrentTables) -> Result<()> {
    let tq = ctx.tensor(&x.q.rows(t0, n).desc())?;
    let tk = ctx.tensor(&x.k.rows(t0, n).desc())?;
    let tv = ctx.tensor(&x.v.rows(t0, n).desc())?;
    let tb = ctx.tensor(&x.beta.rows(t0, n).desc())?;
    let tg = ctx.tensor(&x.g.rows(t0, n).desc())?;
    let to = ctx.tensor(&x.o.rows(t0, n).desc())?;
    let ts = ctx.tensor(&state.desc())?;
    let (tl, ti, ta) = (ctx.tensor(&tables.lens)?, ctx.tensor(&tables.indices)?, ctx.tensor(&tables.accepted)?);
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
