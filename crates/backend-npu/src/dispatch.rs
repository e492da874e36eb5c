//! [`NpuDispatcher`]: the kernels on Ascend, over calls core has already
//! validated ([`Checked`]). Each operation reads its index tables from a
//! step plan ([`StepPlan`]: uploaded once per step; the batch-only entry
//! points build a one-use plan), is cut with core's batch planning
//! ([`plan`]: extend pieces, draft chain segments and paths), gathers or
//! indexes the pool's states for the operators and queues the operator
//! calls on the stream. Nothing waits for the device: temporaries return to
//! the stream's scratch, reused only by work queued after them.
//!
//! | operation | operators |
//! |---|---|
//! | gate | `aclnnAdd`, `aclnnSoftplus`, `aclnnExp`, `aclnnMul`, `aclnnNeg`, `aclnnCast`, `aclnnSigmoid` |
//! | q/k L2 norm | `aclnnRmsNorm` (one call per tensor) |
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
use crate::gdn::{chunk, recurrent, DeltaViews, RecurrentTables};
use crate::memory::NpuMemory;
use crate::norm_gamma::NormGammas;
use crate::result::BACKEND;
use crate::safe::NpuContext;
use crate::soc::SocFamily;
use crate::step_plan::{chunk_calls, scratch_row, verify_segments, PlanTables, StepPlan, StepRef, Table};
use crate::view::View;
use deltanet_core::plan::{self, ChainSegment};
use deltanet_core::{
    Capabilities, Checked, CommitBatch, ConvIo, DecodeBatch, DeltaIo, Error, ExtendBatch, GateCall, Kernels, PoolOf, Result, Slot, VMajor,
    VerifyBatch,
};
use std::sync::{Arc, Mutex};

/// The Ascend NPU backend. Native layout V-major (`[HV, V, K]`), the layout of the aclnn GDN operators.
pub struct NpuDispatcher {
    memory: NpuMemory,
    caps: Capabilities,
    soc: SocFamily,
    /// The one-use plan of the batch-only entry points, rebuilt by each call
    /// (the lock is held from the build to the last operator queued).
    scratch_plan: Mutex<StepPlan>,
    /// The L2 norm's constant `gamma`s (uploaded once per head size).
    norm_gammas: NormGammas,
}

impl std::fmt::Debug for NpuDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpuDispatcher").field("soc", &self.soc).field("caps", &self.caps).finish()
    }
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
        Ok(NpuDispatcher { memory: NpuMemory::new(ctx), caps, soc, scratch_plan: Mutex::default(), norm_gammas: NormGammas::default() })
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

impl NpuDispatcher {
    /// Builds `plan` for an extend step of `batch` (a batch of `pool`) and
    /// queues its one upload; every layer's conv and delta rule of the step
    /// then run on [`planned`](Self::planned)`(&plan)`.
    pub fn plan_extend(&self, plan: &mut StepPlan, pool: &PoolOf<Self>, batch: &ExtendBatch) -> Result<()> {
        batch.check_pool(pool)?;
        self.build_plan(plan, StepRef::Extend(batch))
    }
    /// As [`plan_extend`](Self::plan_extend) for a decode step.
    pub fn plan_decode(&self, plan: &mut StepPlan, pool: &PoolOf<Self>, batch: &DecodeBatch) -> Result<()> {
        batch.check_pool(pool)?;
        self.build_plan(plan, StepRef::Decode(batch))
    }
    /// As [`plan_extend`](Self::plan_extend) for a verify step.
    pub fn plan_verify(&self, plan: &mut StepPlan, pool: &PoolOf<Self>, batch: &VerifyBatch) -> Result<()> {
        batch.check_pool(pool)?;
        self.build_plan(plan, StepRef::Verify(batch))
    }
    /// As [`plan_extend`](Self::plan_extend) for a commit step (device copies
    /// only: nothing is uploaded).
    pub fn plan_commit(&self, plan: &mut StepPlan, pool: &PoolOf<Self>, batch: &CommitBatch) -> Result<()> {
        batch.check_pool(pool)?;
        self.build_plan(plan, StepRef::Commit(batch))
    }

    fn build_plan(&self, plan: &mut StepPlan, step: StepRef<'_>) -> Result<()> {
        let _span = tracing::debug_span!("plan", backend = BACKEND).entered();
        plan.build(self.ctx(), step).map(|_| ())
    }

    /// Runs `run` on the tables of a one-use plan of `step` (the batch-only entry points).
    fn with_scratch_plan(&self, step: StepRef<'_>, run: impl FnOnce(&PlanTables) -> Result<()>) -> Result<()> {
        let mut plan = self.scratch_plan.lock().unwrap_or_else(|p| p.into_inner());
        let tables = plan.build(self.ctx(), step)?;
        run(&tables)
    }

    pub(crate) fn gate_on(&self, call: GateCall<'_>) -> Result<()> {
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

    pub(crate) fn conv_extend_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>, t: &PlanTables) -> Result<()> {
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
            let tables =
                ConvFnTables { query_start: t.all(Table::CuSeqlens), cache: t.all(Table::Slots), initial_mode: t.all(Table::InitialMode) };
            let states = TensorDesc::contiguous(base, dt, &[geo.rows(), w1, c]);
            causal_conv1d_fn(ctx, &x, &w, &states, &tables, &y)
        })
    }

    pub(crate) fn conv_update_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>, t: &PlanTables) -> Result<()> {
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
            causal_conv1d_update(ctx, &x, &w, &states, &t.all(Table::Slots), &y)
        })
    }

    pub(crate) fn conv_verify_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>, t: &PlanTables) -> Result<()> {
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
        let segs = verify_segments(batch);
        pool.checked_parts(ticket, |parts| {
            let conv_base = parts.conv.ptr() + geo.conv_offset(layer, 0) as u64;
            let win = parts.windows.ok_or(Error::NoSpeculativeBuffers)?;
            let win_base = win.ptr() + geo.window_offset(layer, 0, 0) as u64;
            let win_addr = |slot: Slot, t: usize| win_base + (scratch_row(slot, d, t) * w1 * row_bytes) as u64;
            // One operator sequence per chain segment (the plan's tables); its
            // cache line is the window row of the segment's last step.
            for (i, (&slot, s)) in batch.slots().iter().zip(&segs).enumerate() {
                let parents = &batch.parents()[i * d..(i + 1) * d];
                let init = Some(conv_base + geo.conv_offset(0, slot.index()) as u64);
                let global = |path: Vec<usize>| path.into_iter().map(|u| i * d + u).collect::<Vec<_>>();
                for &ChainSegment { start, end, parent } in s {
                    // Windows of the segment's inner steps, built from their sources.
                    for t in start..end - 1 {
                        write_window(ctx, win_addr(slot, t), &window_sources(w1, &global(plan::path_to(parents, t))), init, &x, row_bytes)?;
                    }
                    // The operator's initial state (the parent's window) goes in the row it
                    // leaves the segment's final window in.
                    let from = parent.map_or_else(Vec::new, |p| global(plan::path_to(parents, p)));
                    write_window(ctx, win_addr(slot, end - 1), &window_sources(w1, &from), init, &x, row_bytes)?;
                }
            }
            let n = segs.iter().map(Vec::len).sum();
            let tables = ConvFnTables {
                query_start: t.all(Table::ConvStarts),
                cache: t.all(Table::ConvCache),
                initial_mode: t.slice(Table::Ones, 0, n),
            };
            let states = TensorDesc::contiguous(win_base, dt, &[geo.rows() * d, w1, c]);
            causal_conv1d_fn(ctx, &x, &w, &states, &tables, &y)
        })
    }

    pub(crate) fn extend_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>, t: &PlanTables) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let ctx = self.ctx();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let sdt: AclDType = geo.config.state_dtype.into();
        let sb = geo.state_bytes();
        let views = DeltaViews::new(ctx, &self.norm_gammas, io)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let slot_addr = |seq: usize| base + (batch.slots()[seq].index() * sb) as u64;
            let mut lens_at = 0;
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
                let tokens = pieces.iter().map(|p| p.tokens.len()).sum();
                chunk(ctx, &views, (pieces[0].tokens.start, tokens), &t.slice(Table::ChunkLens, lens_at, nb), &s_in, &s_out)?;
                lens_at += nb;
                for (j, p) in pieces.iter().enumerate() {
                    let src = s_out.addr + (j * sb) as u64;
                    ctx.copy(slot_addr(p.seq), src, sb)?;
                    for snap in &p.snapshots {
                        ctx.copy(base + (snap.index() * sb) as u64, src, sb)?;
                    }
                }
            }
            Ok(())
        })
    }

    pub(crate) fn decode_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>, t: &PlanTables) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let n = batch.num_seqs();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let ctx = self.ctx();
        let views = DeltaViews::new(ctx, &self.norm_gammas, io)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let state = View::contiguous_at(base, geo.config.state_dtype.into(), &[geo.rows(), hv, v, k]);
            let tables =
                RecurrentTables { lens: t.slice(Table::Ones, 0, n), indices: t.all(Table::Slots), accepted: t.slice(Table::Ones, 0, n) };
            recurrent(ctx, &views, &state, (0, n), &tables)
        })
    }

    pub(crate) fn verify_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>, t: &PlanTables) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let d = batch.draft();
        let ctx = self.ctx();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let sb = geo.state_bytes();
        let views = DeltaViews::new(ctx, &self.norm_gammas, io)?;
        let segs = verify_segments(batch);
        pool.checked_parts(ticket, |parts| {
            let main = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let scratch = parts.scratch.ok_or(Error::NoSpeculativeBuffers)?;
            let sbase = scratch.ptr() + geo.scratch_offset(layer, 0, 0) as u64;
            let state = View::contiguous_at(sbase, geo.config.state_dtype.into(), &[geo.rows() * d, hv, v, k]);
            let addr = |slot: Slot, t: usize| sbase + (scratch_row(slot, d, t) * sb) as u64;
            if segs.iter().all(|s| s.len() == 1) {
                // Chains: the slot's state goes to scratch step 0; the operator reads it there
                // (numAcceptedTokens = 1 → ssmStateIndices[start]) and writes step t's state to step t.
                for &slot in batch.slots() {
                    ctx.copy(addr(slot, 0), main + (slot.index() * sb) as u64, sb)?;
                }
                let n = batch.num_seqs();
                let tables = RecurrentTables {
                    lens: t.all(Table::DeltaLens),
                    indices: t.all(Table::DeltaIndices),
                    accepted: t.slice(Table::Ones, 0, n),
                };
                recurrent(ctx, &views, &state, (0, batch.tokens()), &tables)
            } else {
                // Trees: one call per chain segment, in step order (a parent's segment runs first),
                // each starting from a copy of its parent's state.
                let (mut call_at, mut idx_at) = (0, 0);
                for (i, (&slot, s)) in batch.slots().iter().zip(&segs).enumerate() {
                    for &ChainSegment { start, end, parent } in s {
                        let src = parent.map_or(main + (slot.index() * sb) as u64, |p| addr(slot, p));
                        ctx.copy(addr(slot, start), src, sb)?;
                        let tables = RecurrentTables {
                            lens: t.slice(Table::DeltaLens, call_at, 1),
                            indices: t.slice(Table::DeltaIndices, idx_at, end - start),
                            accepted: t.slice(Table::Ones, 0, 1),
                        };
                        recurrent(ctx, &views, &state, (i * d + start, end - start), &tables)?;
                        (call_at, idx_at) = (call_at + 1, idx_at + end - start);
                    }
                }
                Ok(())
            }
        })
    }

    pub(crate) fn commit_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>, _t: &PlanTables) -> Result<()> {
        // Device copies on the stream, in order with every operator: nothing waits.
        pool.commit_checked(&call)
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
        self.gate_on(call)
    }
    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Extend(call.batch()), |t| self.conv_extend_on(pool, call, t))
    }
    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Decode(call.batch()), |t| self.conv_update_on(pool, call, t))
    }
    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Verify(call.batch()), |t| self.conv_verify_on(pool, call, t))
    }
    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Extend(call.batch()), |t| self.extend_on(pool, call, t))
    }
    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Decode(call.batch()), |t| self.decode_on(pool, call, t))
    }
    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Verify(call.batch()), |t| self.verify_on(pool, call, t))
    }
    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        self.commit_on(pool, call, &PlanTables::default())
    }
}
