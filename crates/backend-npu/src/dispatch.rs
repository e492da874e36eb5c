//! [`NpuDispatcher`]: the kernels on Ascend, over calls core has already
//! validated ([`Checked`]). Each operation is planned with core's batch
//! planning ([`plan`]: extend pieces, draft chain segments and paths), the
//! pool's states are gathered or indexed for the operators, the operator
//! calls issued, and the stream drained before returning (the operation's
//! temporaries and index tables return to the stream's scratch, reused by
//! later operations once drained: no device allocation per call after warm-up).
//!
//! | operation | operators |
//! |---|---|
//! | gate | `aclnnCast`, `aclnnAdd`, `aclnnSoftplus`, `aclnnExp`, `aclnnMul`, `aclnnNeg`, `aclnnSigmoid` |
//! | q/k L2 norm | `aclnnCast`, `aclnnMul`, `aclnnReduceSum`, `aclnnAdds`, `aclnnRsqrt`, `aclnnMul`, `aclnnCast` |
//! | extend | `aclnnChunkGatedDeltaRule`, split at snapshot positions; states gathered/scattered by D2D copies |
//! | decode | `aclnnRecurrentGatedDeltaRule`, in place on the pool (`ssmStateIndices` = slots) |
//! | verify | `aclnnRecurrentGatedDeltaRule` on the scratch (one call for chains, one per chain segment for trees) |
//! | conv | `aclnnCausalConv1dFn` (extend, verify), `aclnnCausalConv1dUpdate` (decode) |
//! | commit, snapshots | D2D copies on the stream |
//!
//! Core refuses bad input before a kernel here runs, so it leaves the pool
//! unchanged; what a device error midway leaves is stated in the crate docs
//! ("What an error leaves in the pool").

use crate::api::{AclDType, TensorDesc};
use crate::conv::{causal_conv1d_fn, causal_conv1d_update, window_sources, write_window, ConvFnTables, ConvWeights};
use crate::elementwise::{gate, temp, GateViews};
use crate::gdn::{chunk, recurrent, DeltaViews};
use crate::memory::NpuMemory;
use crate::result::BACKEND;
use crate::safe::NpuContext;
use crate::soc::SocFamily;
use crate::view::View;
use deltanet_core::plan::{self, ChainSegment, Piece};
use deltanet_core::{
    Capabilities, Checked, CommitBatch, ConvIo, DecodeBatch, DeltaIo, Error, ExtendBatch, GateCall, Kernels, PoolOf, Result, Slot, VMajor,
    VerifyBatch,
};
use std::sync::Arc;

/// The Ascend NPU backend. Native layout V-major (`[HV, V, K]`), the layout of the aclnn GDN operators.
pub struct NpuDispatcher {
    memory: NpuMemory,
    caps: Capabilities,
    soc: SocFamily,
}

impl std::fmt::Debug for NpuDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpuDispatcher").field("soc", &self.soc).field("caps", &self.caps).finish()
    }
}

/// The slots as an operator index table (`int32`, what every aclnn index tensor holds).
fn slot_table(slots: &[Slot]) -> Vec<i32> {
    plan::slot_indices(slots).into_iter().map(|i| i as i32).collect()
}

/// Groups an extend's pieces (cut at snapshot positions only: the chunk
/// operator chunks internally) into chunk-operator calls. The operator
/// returns only each sequence's final state, so every piece of a sequence
/// with snapshots is its own call, continuing from the previous piece's
/// state in the slot; the sequences without snapshots between them share one.
fn chunk_calls(batch: &ExtendBatch) -> Vec<Vec<Piece>> {
    let mut calls: Vec<Vec<Piece>> = Vec::new();
    let mut shared: Vec<Piece> = Vec::new();
    for p in plan::extend_pieces(batch, None) {
        if batch.snapshots_of(p.seq).next().is_none() {
            shared.push(p);
        } else {
            if !shared.is_empty() {
                calls.push(std::mem::take(&mut shared));
            }
            calls.push(vec![p]);
        }
    }
    if !shared.is_empty() {
        calls.push(shared);
    }
    calls
}

impl NpuDispatcher {
    /// Loads CANN, opens device `device` and reads its SoC. Without CANN
    /// (or without a device) this returns [`Error::Unavailable`] naming the
    /// library that could not be loaded and where it was searched.
    pub fn new(device: usize) -> Result<Self> {
        let api = crate::cann::Cann::load()?;
        Self::with_api(Arc::new(api), device).map_err(|e| match e {
            Error::Device { op, message, .. } => Error::Unavailable { backend: BACKEND.into(), reason: format!("{op}: {message}") },
            other => other,
        })
    }

    /// A dispatcher over any implementation of the function table (the real
    /// [`Cann`](crate::cann::Cann) loader, or a stand-in).
    pub fn with_api(api: Arc<dyn crate::api::AclApi>, device: usize) -> Result<Self> {
        Self::with_context(NpuContext::new(api, device)?)
    }

    /// As [`new`](Self::new), issuing every operator and copy on the
    /// engine's `aclrtStream` (`torch.npu.current_stream().npu_stream` in
    /// torch_npu) instead of a stream of its own. The engine keeps the stream
    /// alive for the dispatcher's life; it is not destroyed.
    pub fn on_stream(device: usize, stream: crate::api::StreamHandle) -> Result<Self> {
        let api = crate::cann::Cann::load()?;
        Self::with_api_on_stream(Arc::new(api), device, stream)
    }

    /// As [`with_api`](Self::with_api), on the engine's `stream`.
    pub fn with_api_on_stream(api: Arc<dyn crate::api::AclApi>, device: usize, stream: crate::api::StreamHandle) -> Result<Self> {
        Self::with_context(NpuContext::on_stream(api, device, stream)?)
    }

    fn with_context(ctx: NpuContext) -> Result<Self> {
        let ctx = Arc::new(ctx);
        let device = ctx.device();
        let soc = SocFamily::from_soc_name(ctx.soc());
        if let SocFamily::Other(name) = &soc {
            return Err(Error::Unsupported {
                backend: BACKEND.into(),
                reason: format!("SoC {name:?}: the aclnn GDN operators are documented for Atlas A2/A3 and Ascend 950 only"),
            });
        }
        let caps = soc.capabilities(device);
        Ok(NpuDispatcher { memory: NpuMemory::new(ctx), caps, soc })
    }

    /// The SoC generation.
    pub fn soc(&self) -> &SocFamily {
        &self.soc
    }

    fn ctx(&self) -> &NpuContext {
        self.memory.context()
    }

    fn conv_ops_available(&self) -> Result<()> {
        if self.soc.has_conv_ops() {
            Ok(())
        } else {
            Err(Error::Unsupported {
                backend: BACKEND.into(),
                reason: format!("aclnnCausalConv1dFn/Update are documented for Ascend 950 only, this device is {:?}", self.soc),
            })
        }
    }
}

impl Kernels for NpuDispatcher {
    type Layout = VMajor;
    type Memory = NpuMemory;

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn memory(&self) -> &NpuMemory {
        &self.memory
    }

    fn run_gate(&self, call: GateCall<'_>) -> Result<()> {
        let io = call.io();
        gate(
            self.ctx(),
            &GateViews {
                a: View::of(io.a.addr(), io.a.meta()),
                b: View::of(io.b.addr(), io.b.meta()),
                a_log: View::of(io.a_log.addr(), io.a_log.meta()),
                dt_bias: View::of(io.dt_bias.addr(), io.dt_bias.meta()),
                g: View::of(io.g.addr(), io.g.meta()),
                beta: View::of(io.beta.addr(), io.beta.meta()),
            },
        )
    }

    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        self.conv_ops_available()?;
        let ctx = self.ctx();
        let (c, w1) = (dims.conv_dim(), dims.conv_state_len());
        let dt: AclDType = geo.config.conv_dtype.into();
        let row_bytes = c * dt.size();
        let x = View::of(io.x.addr(), io.x.meta());
        let y = View::of(io.out.addr(), io.out.meta());
        let w = ConvWeights::new(ctx, io, dt)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.conv.ptr() + geo.conv_offset(layer, 0) as u64;
            // Snapshot windows first: they read the slot's state before the operator overwrites it.
            for s in batch.snapshots() {
                let r = batch.seq_range(s.seq);
                let tokens: Vec<usize> = (r.start..r.start + s.position).collect();
                let init = batch.has_initial_state()[s.seq].then(|| base + geo.conv_offset(0, batch.slots()[s.seq].index()) as u64);
                write_window(ctx, base + geo.conv_offset(0, s.slot.index()) as u64, &window_sources(w1, &tokens), init, &x, row_bytes)?;
            }
            let tables = ConvFnTables {
                query_start: batch.cu_seqlens().iter().map(|&v| v as i32).collect(),
                cache: slot_table(batch.slots()),
                initial_mode: batch.has_initial_state().iter().map(|&h| h as i32).collect(),
            };
            let states = TensorDesc::contiguous(base, dt, &[geo.rows(), w1, c]);
            causal_conv1d_fn(ctx, &x, &w, &states, &tables, &y)?;
            Ok(ctx.synchronize()?)
        })
    }

    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        self.conv_ops_available()?;
        let ctx = self.ctx();
        let (n, c, w1) = (batch.num_seqs(), dims.conv_dim(), dims.conv_state_len());
        let dt: AclDType = geo.config.conv_dtype.into();
        // One token per sequence: `[batch, 1, C]`, the operator's decode shape.
        let (xs, ys) = (io.x.meta().strides()[0], io.out.meta().strides()[0]);
        let x = View { addr: io.x.addr(), dtype: io.x.meta().dtype().into(), shape: vec![n, 1, c], strides: vec![xs, c, 1] };
        let y = View { addr: io.out.addr(), dtype: io.out.meta().dtype().into(), shape: vec![n, 1, c], strides: vec![ys, c, 1] };
        let w = ConvWeights::new(ctx, io, dt)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.conv.ptr() + geo.conv_offset(layer, 0) as u64;
            let states = TensorDesc::contiguous(base, dt, &[geo.rows(), w1, c]);
            causal_conv1d_update(ctx, &x, &w, &states, &slot_table(batch.slots()), &y)?;
            Ok(ctx.synchronize()?)
        })
    }

    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        self.conv_ops_available()?;
        let ctx = self.ctx();
        let (c, w1, d) = (dims.conv_dim(), dims.conv_state_len(), batch.draft());
        let dt: AclDType = geo.config.conv_dtype.into();
        let row_bytes = c * dt.size();
        let x = View::of(io.x.addr(), io.x.meta());
        let y = View::of(io.out.addr(), io.out.meta());
        let w = ConvWeights::new(ctx, io, dt)?;
        pool.checked_parts(ticket, |parts| {
            let conv_base = parts.conv.ptr() + geo.conv_offset(layer, 0) as u64;
            let win = parts.windows.ok_or(Error::NoSpeculativeBuffers)?;
            let win_base = win.ptr() + geo.window_offset(layer, 0, 0) as u64;
            let win_addr = |slot: Slot, t: usize| win_base + ((slot.index() * d + t) * w1 * row_bytes) as u64;
            // One operator sequence per chain segment; its cache line is the
            // window row of the segment's last step.
            let mut tables = ConvFnTables { query_start: vec![0], cache: Vec::new(), initial_mode: Vec::new() };
            for (i, &slot) in batch.slots().iter().enumerate() {
                let parents = &batch.parents()[i * d..(i + 1) * d];
                let init = Some(conv_base + geo.conv_offset(0, slot.index()) as u64);
                let global = |path: Vec<usize>| path.into_iter().map(|u| i * d + u).collect::<Vec<_>>();
                for ChainSegment { start, end, parent } in plan::chain_segments(parents) {
                    // Windows of the segment's inner steps, built from their sources.
                    for t in start..end - 1 {
                        write_window(ctx, win_addr(slot, t), &window_sources(w1, &global(plan::path_to(parents, t))), init, &x, row_bytes)?;
                    }
                    // The operator's initial state (the parent's window) goes in the row it
                    // leaves the segment's final window in.
                    let from = parent.map_or_else(Vec::new, |p| global(plan::path_to(parents, p)));
                    write_window(ctx, win_addr(slot, end - 1), &window_sources(w1, &from), init, &x, row_bytes)?;
                    tables.query_start.push((i * d + end) as i32);
                    tables.cache.push((slot.index() * d + end - 1) as i32);
                    tables.initial_mode.push(1);
                }
            }
            let states = TensorDesc::contiguous(win_base, dt, &[geo.rows() * d, w1, c]);
            causal_conv1d_fn(ctx, &x, &w, &states, &tables, &y)?;
            Ok(ctx.synchronize()?)
        })
    }

    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let ctx = self.ctx();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let sdt: AclDType = geo.config.state_dtype.into();
        let sb = geo.state_bytes();
        let views = DeltaViews::new(ctx, io)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let slot_addr = |seq: usize| base + (batch.slots()[seq].index() * sb) as u64;
            for pieces in chunk_calls(batch) {
                let nb = pieces.len();
                // Each call's states are gathered into the operator's [B, HV, V, K] and scattered back after.
                let (_in_b, s_in) = temp(ctx, sdt, &[nb, hv, v, k])?;
                let (_out_b, s_out) = temp(ctx, sdt, &[nb, hv, v, k])?;
                for (j, p) in pieces.iter().enumerate() {
                    let dst = s_in.addr + (j * sb) as u64;
                    if p.from_slot {
                        ctx.copy(dst, slot_addr(p.seq), sb)?;
                    } else {
                        ctx.zero(dst, sb)?;
                    }
                }
                let lens: Vec<i32> = pieces.iter().map(|p| p.tokens.len() as i32).collect();
                chunk(ctx, &views, pieces[0].tokens.start, &lens, &s_in, &s_out)?;
                for (j, p) in pieces.iter().enumerate() {
                    let src = s_out.addr + (j * sb) as u64;
                    ctx.copy(slot_addr(p.seq), src, sb)?;
                    for snap in &p.snapshots {
                        ctx.copy(base + (snap.index() * sb) as u64, src, sb)?;
                    }
                }
                // Drained per chunk call, as before (removing it waits for NPU step plans).
                ctx.synchronize()?;
            }
            Ok(ctx.synchronize()?)
        })
    }

    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let n = batch.num_seqs();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let ctx = self.ctx();
        let views = DeltaViews::new(ctx, io)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let state = View::contiguous_at(base, geo.config.state_dtype.into(), &[geo.rows(), hv, v, k]);
            recurrent(ctx, &views, &state, 0, &vec![1; n], &slot_table(batch.slots()), &vec![1; n])?;
            Ok(ctx.synchronize()?)
        })
    }

    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let d = batch.draft();
        let ctx = self.ctx();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let sb = geo.state_bytes();
        let views = DeltaViews::new(ctx, io)?;
        pool.checked_parts(ticket, |parts| {
            let main = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let scratch = parts.scratch.ok_or(Error::NoSpeculativeBuffers)?;
            let sbase = scratch.ptr() + geo.scratch_offset(layer, 0, 0) as u64;
            let state = View::contiguous_at(sbase, geo.config.state_dtype.into(), &[geo.rows() * d, hv, v, k]);
            let row = |slot: Slot, t: usize| slot.index() * d + t;
            let addr = |r: usize| sbase + (r * sb) as u64;
            let segs: Vec<Vec<ChainSegment>> =
                (0..batch.num_seqs()).map(|i| plan::chain_segments(&batch.parents()[i * d..(i + 1) * d])).collect();
            if segs.iter().all(|s| s.len() == 1) {
                // Chains: the slot's state goes to scratch step 0; the operator reads it there
                // (numAcceptedTokens = 1 → ssmStateIndices[start]) and writes step t's state to step t.
                let mut idx = Vec::with_capacity(batch.tokens());
                for &slot in batch.slots() {
                    ctx.copy(addr(row(slot, 0)), main + (slot.index() * sb) as u64, sb)?;
                    idx.extend((0..d).map(|t| row(slot, t) as i32));
                }
                let n = batch.num_seqs();
                recurrent(ctx, &views, &state, 0, &vec![d as i32; n], &idx, &vec![1; n])?;
            } else {
                // Trees: one call per chain segment, in step order (a parent's segment runs first),
                // each starting from a copy of its parent's state.
                for (i, &slot) in batch.slots().iter().enumerate() {
                    for &ChainSegment { start, end, parent } in &segs[i] {
                        let src = parent.map_or(main + (slot.index() * sb) as u64, |p| addr(row(slot, p)));
                        ctx.copy(addr(row(slot, start)), src, sb)?;
                        let idx: Vec<i32> = (start..end).map(|t| row(slot, t) as i32).collect();
                        recurrent(ctx, &views, &state, i * d + start, &[(end - start) as i32], &idx, &[1])?;
                    }
                }
            }
            Ok(ctx.synchronize()?)
        })
    }

    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        pool.commit_checked(&call)?;
        Ok(self.ctx().synchronize()?)
    }
}
