//! Step plans: the int32 index tables every operator of one forward step
//! reads (cache lines, sequence lengths, state indices), built once on the
//! host from a validated batch, uploaded once — one `aclrtMemcpyAsync` from
//! page-locked memory (`aclrtMallocHost`) into a device buffer the plan owns —
//! and read by every layer's operators in that step.
//!
//! A plan is rebuilt in place for the next step: while the new tables fit,
//! nothing is allocated. Page-locked staging is rewritten only once the
//! upload from it has run, which the plan asks (never waits for) through the
//! event recorded after the upload: a rebuild writes into a staging buffer
//! whose upload has run, or a new one while earlier uploads are still
//! queued (at most [`MAX_STAGING`]; beyond that it waits for the oldest). So
//! neither an engine's plan nor the batch-only path's one-use plan, rebuilt
//! by every operation, waits in the steady state, and a rebuild never races
//! a copy. The device buffer is stream-ordered: a rebuild's upload is queued
//! after every operator of the previous step that read it.

use crate::api::{AclDType, DevPtr, TensorDesc};
use crate::safe::{DeviceBuffer, NpuContext, Staging};
use deltanet_core::plan::{self, ChainSegment, Piece};
use deltanet_core::{CommitBatch, DecodeBatch, Error, ExtendBatch, Result, Slot, VerifyBatch};
use std::collections::VecDeque;

/// Most staging buffers a plan keeps with an upload still queued before a
/// rebuild waits for the oldest: the depth of uploads in flight that is
/// served without waiting (one is enough on any engine's schedule).
pub(crate) const MAX_STAGING: usize = 4;

/// Alignment of every table in the device buffer (`aclrtMemcpyAsync` and
/// the operators' tensors want 64-byte aligned addresses).
const ALIGN: usize = 64;

/// The batch of a step, borrowed: what a plan is built from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StepRef<'a> {
    Extend(&'a ExtendBatch),
    Decode(&'a DecodeBatch),
    Verify(&'a VerifyBatch),
    Commit(&'a CommitBatch),
}

/// The batch a plan was built from, kept to refuse a call with another batch.
#[derive(Debug, Clone, PartialEq)]
enum StepBatch {
    Extend(ExtendBatch),
    Decode(DecodeBatch),
    Verify(VerifyBatch),
    Commit(CommitBatch),
}

impl StepRef<'_> {
    fn to_owned(self) -> StepBatch {
        match self {
            StepRef::Extend(b) => StepBatch::Extend(b.clone()),
            StepRef::Decode(b) => StepBatch::Decode(b.clone()),
            StepRef::Verify(b) => StepBatch::Verify(b.clone()),
            StepRef::Commit(b) => StepBatch::Commit(b.clone()),
        }
    }
    fn is(self, owned: &StepBatch) -> bool {
        match (self, owned) {
            (StepRef::Extend(a), StepBatch::Extend(b)) => a == b,
            (StepRef::Decode(a), StepBatch::Decode(b)) => a == b,
            (StepRef::Verify(a), StepBatch::Verify(b)) => a == b,
            (StepRef::Commit(a), StepBatch::Commit(b)) => a == b,
            _ => false,
        }
    }
    fn kind(self) -> &'static str {
        match self {
            StepRef::Extend(_) => "extend",
            StepRef::Decode(_) => "decode",
            StepRef::Verify(_) => "verify",
            StepRef::Commit(_) => "commit",
        }
    }
}

impl StepBatch {
    fn kind(&self) -> &'static str {
        match self {
            StepBatch::Extend(_) => "extend",
            StepBatch::Decode(_) => "decode",
            StepBatch::Verify(_) => "verify",
            StepBatch::Commit(_) => "commit",
        }
    }
}

/// The tables a step's operators read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// Ones: decode lengths, `numAcceptedTokens`, a verify's conv initial modes.
    Ones,
    /// Each request's slot (decode and extend conv cache lines, decode state indices).
    Slots,
    /// Extend: `cu_seqlens` (the conv's `queryStartLoc`).
    CuSeqlens,
    /// Extend: 1 where a sequence starts from its slot's conv state.
    InitialMode,
    /// Extend: every chunk-operator call's sequence lengths, call after call ([`chunk_calls`]).
    ChunkLens,
    /// Verify: the conv's `queryStartLoc` over chain segments.
    ConvStarts,
    /// Verify: each chain segment's window row.
    ConvCache,
    /// Verify: every recurrent-operator call's sequence lengths, call after call.
    DeltaLens,
    /// Verify: every recurrent-operator call's state indices, call after call.
    DeltaIndices,
}

/// Groups an extend's pieces (cut at snapshot positions only: the chunk
/// operator chunks internally) into chunk-operator calls. The operator
/// returns only each sequence's final state, so every piece of a sequence
/// with snapshots is its own call, continuing from the previous piece's
/// state in the slot; the sequences without snapshots between them share one.
pub(crate) fn chunk_calls(batch: &ExtendBatch) -> Vec<Vec<Piece>> {
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

/// The chain segments of each request of a verify.
pub(crate) fn verify_segments(batch: &VerifyBatch) -> Vec<Vec<ChainSegment>> {
    let d = batch.draft();
    (0..batch.num_seqs()).map(|i| plan::chain_segments(&batch.parents()[i * d..(i + 1) * d])).collect()
}

/// The scratch row of draft step `t` of `slot`.
pub(crate) fn scratch_row(slot: Slot, draft: usize, t: usize) -> usize {
    slot.index() * draft + t
}

fn slot_table(slots: &[Slot]) -> Vec<i32> {
    plan::slot_indices(slots).into_iter().map(|i| i as i32).collect()
}

/// The host tables of `step`, in the order they are laid out.
fn host_tables(step: StepRef<'_>) -> Vec<(Table, Vec<i32>)> {
    match step {
        StepRef::Decode(b) => vec![(Table::Ones, vec![1; b.num_seqs()]), (Table::Slots, slot_table(b.slots()))],
        StepRef::Extend(b) => {
            let lens = chunk_calls(b).iter().flatten().map(|p| p.tokens.len() as i32).collect();
            vec![
                (Table::CuSeqlens, b.cu_seqlens().iter().map(|&v| v as i32).collect()),
                (Table::Slots, slot_table(b.slots())),
                (Table::InitialMode, b.has_initial_state().iter().map(|&h| h as i32).collect()),
                (Table::ChunkLens, lens),
            ]
        }
        StepRef::Verify(b) => {
            let d = b.draft();
            let segs = verify_segments(b);
            let (mut starts, mut cache) = (vec![0], Vec::new());
            for (i, (&slot, s)) in b.slots().iter().zip(&segs).enumerate() {
                for seg in s {
                    starts.push((i * d + seg.end) as i32);
                    cache.push(scratch_row(slot, d, seg.end - 1) as i32);
                }
            }
            let (mut lens, mut idx) = (Vec::new(), Vec::new());
            if segs.iter().all(|s| s.len() == 1) {
                // Chains: one call, every request's d steps.
                for &slot in b.slots() {
                    lens.push(d as i32);
                    idx.extend((0..d).map(|t| scratch_row(slot, d, t) as i32));
                }
            } else {
                // Trees: one call per chain segment.
                for (&slot, s) in b.slots().iter().zip(&segs) {
                    for seg in s {
                        lens.push((seg.end - seg.start) as i32);
                        idx.extend((seg.start..seg.end).map(|t| scratch_row(slot, d, t) as i32));
                    }
                }
            }
            let ones = vec![1; cache.len().max(b.num_seqs())];
            vec![
                (Table::Ones, ones),
                (Table::ConvStarts, starts),
                (Table::ConvCache, cache),
                (Table::DeltaLens, lens),
                (Table::DeltaIndices, idx),
            ]
        }
        // A commit is device copies only: no table.
        StepRef::Commit(_) => Vec::new(),
    }
}

/// Where a built plan's tables are on the device.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlanTables {
    entries: Vec<(Table, DevPtr, usize)>,
}

impl PlanTables {
    /// Elements `start..start+n` of `table` as an int32 tensor descriptor.
    pub(crate) fn slice(&self, table: Table, start: usize, n: usize) -> TensorDesc {
        let &(_, addr, len) = self.entries.iter().find(|e| e.0 == table).unwrap_or_else(|| panic!("the plan has no {table:?} table"));
        assert!(start + n <= len, "{table:?}[{start}..{}] of {len}", start + n);
        TensorDesc::contiguous(addr + (start * 4) as u64, AclDType::I32, &[n])
    }
    /// The whole of `table`.
    pub(crate) fn all(&self, table: Table) -> TensorDesc {
        let len = self.entries.iter().find(|e| e.0 == table).map_or(0, |e| e.2);
        self.slice(table, 0, len)
    }
}

/// The index tables of one step on the device (see the module docs).
///
/// Built by the dispatcher's `plan_*` methods, used through
/// [`NpuDispatcher::planned`](crate::NpuDispatcher::planned) by every layer
/// of the step, rebuilt for the next step.
#[derive(Default)]
pub struct StepPlan {
    /// Page-locked staging, least recently uploaded first.
    staging: VecDeque<Staging>,
    device: Option<DeviceBuffer>,
    built: Option<(StepBatch, PlanTables)>,
}

impl std::fmt::Debug for StepPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepPlan").field("device_bytes", &self.device_bytes()).field("built", &self.built.as_ref().map(|b| &b.0)).finish()
    }
}

impl StepPlan {
    /// An empty plan: its buffers are allocated by the first build and grow
    /// when a later step's tables do not fit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device bytes the plan holds.
    pub fn device_bytes(&self) -> usize {
        self.device.as_ref().map_or(0, |d| d.len())
    }

    /// Builds the tables of `step` into the staging memory (growing both
    /// buffers if needed) and queues their one upload.
    pub(crate) fn build(&mut self, ctx: &NpuContext, step: StepRef<'_>) -> Result<PlanTables> {
        self.built = None;
        let tables = host_tables(step);
        if tables.is_empty() {
            // Nothing to upload (a commit).
            self.built = Some((step.to_owned(), PlanTables::default()));
            return Ok(PlanTables::default());
        }
        let mut offsets = Vec::with_capacity(tables.len());
        let mut bytes = 0;
        for (_, t) in &tables {
            offsets.push(bytes);
            bytes += (t.len().max(1) * 4).next_multiple_of(ALIGN);
        }
        if bytes > self.device_bytes() {
            // From the stream's scratch: the old buffer goes back to it,
            // reused only by work queued after every operator that read it.
            self.device = None;
            self.device = Some(ctx.scratch(bytes.next_power_of_two())?);
        }
        let mut staging = self.idle_staging(ctx, bytes)?;
        let out = staging.bytes_mut()?;
        for ((_, t), &o) in tables.iter().zip(&offsets) {
            for (j, v) in t.iter().enumerate() {
                out[o + 4 * j..o + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        let base = self.device.as_ref().expect("allocated above").ptr();
        let uploaded = staging.upload(ctx, base, bytes);
        self.staging.push_back(staging);
        uploaded?;
        let entries = tables.iter().zip(&offsets).map(|((name, t), &o)| (*name, base + o as u64, t.len())).collect();
        let planned = PlanTables { entries };
        self.built = Some((step.to_owned(), planned.clone()));
        Ok(planned)
    }

    /// Staging of at least `bytes` with no upload queued: the least recently
    /// used such buffer, else a new one while fewer than [`MAX_STAGING`] are
    /// in flight, else the oldest once its upload has run (the only wait).
    fn idle_staging(&mut self, ctx: &NpuContext, bytes: usize) -> Result<Staging> {
        for i in 0..self.staging.len() {
            let s = &self.staging[i];
            if s.len() >= bytes && s.idle()? {
                return Ok(self.staging.remove(i).expect("in range"));
            }
        }
        if self.staging.len() >= MAX_STAGING {
            // Too small or still queued, all of them: the oldest goes (its drop waits for its upload).
            let oldest = self.staging.pop_front().expect("MAX_STAGING > 0");
            if oldest.len() >= bytes {
                return Ok(oldest);
            }
        }
        Ok(Staging::new(ctx, bytes.next_power_of_two())?)
    }

    /// The device tables, when the plan was built for exactly `step`'s batch.
    pub(crate) fn tables_for(&self, step: StepRef<'_>) -> Result<&PlanTables> {
        match &self.built {
            Some((b, t)) if step.is(b) => Ok(t),
            Some((b, _)) => Err(Error::InvalidConfig(format!(
                "the step plan was built for another batch (a {} batch) than this {} call's",
                b.kind(),
                step.kind()
            ))),
            None => Err(Error::InvalidConfig(format!("the step plan is not built (a {} call)", step.kind()))),
        }
    }
}
