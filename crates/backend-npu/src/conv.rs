//! The short convolution on the CausalConv1d operators: the weight and bias
//! in the operators' `[W, C]` layout and input dtype, the conv windows the
//! dispatcher builds by copies (snapshots, draft steps), and the two
//! operator calls. Both operators are documented for Ascend 950 only.

use crate::api::{AclDType, DevPtr, OpCall, TensorDesc};
use crate::elementwise::{cast, temp};
use crate::safe::{DeviceBuffer, NpuContext};
use crate::view::View;
use deltanet_core::{ConvIo, Result};
use std::ffi::CStr;

const SILU: &CStr = c"silu";

/// The conv weight `[C, W]` f32 as the operators' `[W, C]`, and the bias,
/// both cast to the conv state's dtype, with the buffers behind them.
pub(crate) struct ConvWeights {
    pub(crate) weight: View,
    pub(crate) bias: Option<View>,
    _keep: Vec<DeviceBuffer>,
}

impl ConvWeights {
    /// Casts (a strided read: the transpose is free) on the stream.
    pub(crate) fn new(ctx: &NpuContext, io: &ConvIo<'_>, dtype: AclDType) -> Result<Self> {
        let (c, w) = (io.weight.meta().shape()[0], io.weight.meta().shape()[1]);
        let ws = io.weight.meta().strides();
        let src = View { addr: io.weight.addr(), dtype: AclDType::F32, shape: vec![w, c], strides: vec![ws[1], ws[0]] };
        let (wb, weight) = temp(ctx, dtype, &[w, c])?;
        cast(ctx, &src, &weight)?;
        let mut keep = vec![wb];
        let bias = match &io.bias {
            Some(b) => {
                let (bb, bv) = temp(ctx, dtype, &[c])?;
                cast(ctx, &View::of(b.addr(), b.meta()), &bv)?;
                keep.push(bb);
                Some(bv)
            }
            None => None,
        };
        Ok(ConvWeights { weight, bias, _keep: keep })
    }
}

/// Where each row of a conv window comes from: `Ok(j)` row `j` of a
/// sequence's starting conv state, `Err(u)` row `u` of the input `x`.
pub(crate) type WindowRow = std::result::Result<usize, usize>;

/// The last `w1` rows of `[state rows 0..w1] ++ tokens`: the window after `tokens`.
pub(crate) fn window_sources(w1: usize, tokens: &[usize]) -> Vec<WindowRow> {
    let mut all: Vec<WindowRow> = (0..w1).map(Ok).collect();
    all.extend(tokens.iter().map(|&u| Err(u)));
    all.split_off(all.len() - w1)
}

/// Writes a conv window (`W-1` rows of `C` channels, channels-last) at `dst`
/// from `rows`, the state rows read at `init` (zeros when `None`).
pub(crate) fn write_window(
    ctx: &NpuContext,
    dst: DevPtr,
    rows: &[WindowRow],
    init: Option<DevPtr>,
    x: &View,
    row_bytes: usize,
) -> Result<()> {
    for (r, src) in rows.iter().enumerate() {
        let d = dst + (r * row_bytes) as u64;
        match (*src, init) {
            (Ok(j), Some(base)) => ctx.copy(d, base + (j * row_bytes) as u64, row_bytes)?,
            (Ok(_), None) => ctx.zero(d, row_bytes)?,
            (Err(u), _) => ctx.copy(d, x.row_addr(u), row_bytes)?,
        }
    }
    Ok(())
}

/// The index tables of one `aclnnCausalConv1dFn` call (int32, in a step
/// plan): sequence `i` is packed rows `query_start[i]..query_start[i+1]`,
/// reads and writes cache line `cache[i]`, from that line (`initial_mode[i]`
/// 1) or zeros (0).
pub(crate) struct ConvFnTables {
    pub(crate) query_start: TensorDesc,
    pub(crate) cache: TensorDesc,
    pub(crate) initial_mode: TensorDesc,
}

/// `aclnnCausalConv1dFn` (SiLU) from `x` to `y`, in place on the cache lines `states` (`[lines, W-1, C]`).
pub(crate) fn causal_conv1d_fn(
    ctx: &NpuContext,
    x: &View,
    w: &ConvWeights,
    states: &TensorDesc,
    tables: &ConvFnTables,
    y: &View,
) -> Result<()> {
    let (tx, tw, ts, ty) = (ctx.tensor(&x.desc())?, ctx.tensor(&w.weight.desc())?, ctx.tensor(states)?, ctx.tensor(&y.desc())?);
    let tb = w.bias.as_ref().map(|b| ctx.tensor(&b.desc())).transpose()?;
    let tq = ctx.tensor(&tables.query_start)?;
    let ti = ctx.tensor(&tables.cache)?;
    let tm = ctx.tensor(&tables.initial_mode)?;
    Ok(ctx.run(&OpCall::CausalConv1dFn {
        x: tx.h(),
        weight: tw.h(),
        conv_states: ts.h(),
        bias: tb.as_ref().map(|t| t.h()),
        query_start_loc: Some(tq.h()),
        cache_indices: Some(ti.h()),
        initial_state_mode: Some(tm.h()),
        activation: SILU,
        null_block_id: -1,
        block_size_to_align: 0,
        y: ty.h(),
    })?)
}

/// `aclnnCausalConv1dUpdate` (SiLU) of one token per sequence (`x`, `y`:
/// `[batch, 1, C]`), in place on cache lines `cache` (int32) of `states`.
pub(crate) fn causal_conv1d_update(
    ctx: &NpuContext,
    x: &View,
    w: &ConvWeights,
    states: &TensorDesc,
    cache: &TensorDesc,
    y: &View,
) -> Result<()> {
    let (tx, tw, ts, ty) = (ctx.tensor(&x.desc())?, ctx.tensor(&w.weight.desc())?, ctx.tensor(states)?, ctx.tensor(&y.desc())?);
    let tb = w.bias.as_ref().map(|b| ctx.tensor(&b.desc())).transpose()?;
    let ti = ctx.tensor(cache)?;
    Ok(ctx.run(&OpCall::CausalConv1dUpdate {
        x: tx.h(),
        weight: tw.h(),
        conv_states: ts.h(),
        bias: tb.as_ref().map(|t| t.h()),
        query_start_loc: None,
        cache_indices: Some(ti.h()),
        num_accepted_tokens: None,
        activation: SILU,
        null_block_id: -1,
        max_query_len: -1,
        y: ty.h(),
    })?)
}
