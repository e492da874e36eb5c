//! Step plans: the index tables of one forward step, built once on the host
//! from a validated batch, uploaded once (one asynchronous copy from staging
//! memory into a device buffer the plan owns) and read by every layer's
//! kernels in that step.
//!
//! A plan is rebuilt in place for the next step: while the new tables fit,
//! nothing is allocated and the device addresses stay the same. A plan made
//! [`with_capacity`](StepPlan::with_capacity)`(n)` lays its tables out for `n`
//! sequences whatever the batch, and pads decode and verify entries past the
//! batch with the padding slot 0, so a decode or verify step replayed from a
//! CUDA graph captured with `n` sequences reads the same addresses for any
//! batch of up to `n`.

use crate::extend_tc::tc_workspace_bytes;
use crate::kernels::{CHUNK, EXTEND_ROWS};
use crate::launcher::Launcher;
use deltanet_core::{
    plan, CommitBatch, DecodeBatch, DeviceMemory, Error, ExtendBatch, MambaStatePool, ModelDims, Result, StateLayout, StatePool,
    VerifyBatch,
};

/// Alignment of every table and of the workspace.
const ALIGN: usize = 256;

/// The batch of a step, borrowed: what a plan is built from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StepRef<'a> {
    Extend(&'a ExtendBatch),
    Decode(&'a DecodeBatch),
    Verify(&'a VerifyBatch),
    Commit(&'a CommitBatch),
    /// A commit of a replay pool, with the paths its requests replay.
    CommitReplay(&'a CommitBatch, &'a ReplayPaths),
}

/// The accepted paths of a replay commit, per committed request (root
/// first), from the pool's record of the last verify: a replay commit's
/// tables are these paths, so a plan is built for them as well as for its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplayPaths {
    /// Draft tokens D of the pool (the paths table's row length).
    pub draft: usize,
    /// One path per [`CommitBatch::commits`] entry.
    pub paths: Vec<Vec<usize>>,
}

impl ReplayPaths {
    /// The paths `batch` (a batch of `pool`) replays in `layer`.
    pub fn of<M: DeviceMemory, L: StateLayout>(pool: &StatePool<M, L>, layer: usize, batch: &CommitBatch) -> Self {
        let paths = batch.commits().map(|c| pool.replay_path(layer, c.slot.index(), c.step)).collect();
        ReplayPaths { draft: pool.geometry().draft(), paths }
    }
}

/// The batch a plan was built from, kept to refuse a call with another batch.
#[derive(Debug, Clone, PartialEq)]
enum StepBatch {
    Extend(ExtendBatch),
    Decode(DecodeBatch),
    Verify(VerifyBatch),
    Commit(CommitBatch),
    CommitReplay(CommitBatch, ReplayPaths),
}

impl StepBatch {
    fn kind(&self) -> &'static str {
        match self {
            StepBatch::Extend(_) => "extend",
            StepBatch::Decode(_) => "decode",
            StepBatch::Verify(_) => "verify",
            StepBatch::Commit(_) => "commit",
            StepBatch::CommitReplay(..) => "replay commit",
        }
    }
}

impl StepRef<'_> {
    fn to_owned(self) -> StepBatch {
        match self {
            StepRef::Extend(b) => StepBatch::Extend(b.clone()),
            StepRef::Decode(b) => StepBatch::Decode(b.clone()),
            StepRef::Verify(b) => StepBatch::Verify(b.clone()),
            StepRef::Commit(b) => StepBatch::Commit(b.clone()),
            StepRef::CommitReplay(b, p) => StepBatch::CommitReplay(b.clone(), p.clone()),
        }
    }
    fn is(self, owned: &StepBatch) -> bool {
        match (self, owned) {
            (StepRef::Extend(a), StepBatch::Extend(b)) => a == b,
            (StepRef::Decode(a), StepBatch::Decode(b)) => a == b,
            (StepRef::Verify(a), StepBatch::Verify(b)) => a == b,
            (StepRef::Commit(a), StepBatch::Commit(b)) => a == b,
            (StepRef::CommitReplay(a, pa), StepBatch::CommitReplay(b, pb)) => a == b && pa == pb,
            _ => false,
        }
    }
    fn kind(self) -> &'static str {
        match self {
            StepRef::Extend(_) => "extend",
            StepRef::Decode(_) => "decode",
            StepRef::Verify(_) => "verify",
            StepRef::Commit(_) => "commit",
            StepRef::CommitReplay(..) => "replay commit",
        }
    }
}

/// Where a built plan's tables are on the device, and the launch shapes
/// that depend on them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PlanAddrs {
    /// Device address of each table, in the order of [`host_tables`].
    pub tables: [u64; MAX_TABLES],
    /// Device address of the extend workspace.
    pub workspace: u64,
    /// Blocks of the extend kernel along the sequences (they take the sequences in turns).
    pub extend_rows: usize,
    /// (target, step, slot) triples of a commit; committed requests of a replay commit.
    pub commit_targets: usize,
}

/// How a plan sizes the extend workspace: the dispatcher's budget, and
/// whether the tensor-core kernel may run the step's extend (the workspace
/// then fits the larger of the two kernels' needs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExtendWorkspace {
    pub budget: usize,
    pub tensor_cores: bool,
}

/// Most tables of one step.
const MAX_TABLES: usize = 5;

/// The host tables of a step and its workspace size.
struct HostTables {
    /// Extend: conv sequences, conv snapshots, delta sequences, chunks,
    /// snapshot slots. Decode: conv sequences, slots. Verify: conv sequences,
    /// parents, slots. Commit: targets. Replay commit: commits, paths.
    tables: Vec<Vec<i64>>,
    /// Elements each table's region is laid out for (at least its length).
    regions: Vec<usize>,
    workspace_bytes: usize,
    extend_rows: usize,
    commit_targets: usize,
}

/// The tables of `step`, laid out for `capacity` sequences, with decode and
/// verify entries past the batch padded onto slot 0.
fn host_tables(step: StepRef<'_>, dims: &ModelDims, capacity: usize, ws: ExtendWorkspace) -> HostTables {
    let workspace_budget = ws.budget;
    let mut out = HostTables { tables: Vec::new(), regions: Vec::new(), workspace_bytes: 0, extend_rows: 0, commit_targets: 0 };
    match step {
        StepRef::Extend(batch) => {
            let n = batch.num_seqs();
            let (mut conv_seqs, mut conv_snaps) = (Vec::with_capacity(n * 6), Vec::new());
            for i in 0..n {
                let begin = conv_snaps.len() as i64 / 2;
                for s in batch.snapshots_of(i) {
                    conv_snaps.extend([s.position as i64, s.slot.index() as i64]);
                }
                let r = batch.seq_range(i);
                let init = batch.has_initial_state()[i] as i64;
                conv_seqs.extend([
                    r.start as i64,
                    r.len() as i64,
                    batch.slots()[i].index() as i64,
                    init,
                    begin,
                    conv_snaps.len() as i64 / 2,
                ]);
            }
            // Chunks of CHUNK tokens from each sequence's start, also cut at snapshot
            // positions (core's plan); each snapshot is taken at the end of its chunk.
            let (mut seqs, mut chunks, mut snap_slots) = (Vec::with_capacity(n * 6), Vec::new(), Vec::new());
            let pieces = plan::extend_pieces(batch, Some(CHUNK));
            for i in 0..n {
                let r = batch.seq_range(i);
                let first_chunk = chunks.len() as i64 / 4;
                for p in pieces.iter().filter(|p| p.seq == i) {
                    let sb = snap_slots.len() as i64;
                    snap_slots.extend(plan::slot_indices(&p.snapshots));
                    chunks.extend([p.tokens.start as i64, p.tokens.len() as i64, sb, snap_slots.len() as i64]);
                }
                let init = batch.has_initial_state()[i] as i64;
                seqs.extend([r.start as i64, r.len() as i64, batch.slots()[i].index() as i64, init, first_chunk, chunks.len() as i64 / 4]);
            }
            let (k, v, hv) = (dims.head_k_dim, dims.head_v_dim, dims.num_v_heads);
            let per_block = EXTEND_ROWS * k + CHUNK * (3 * k + 2 * EXTEND_ROWS);
            let per_row = hv * v.div_ceil(EXTEND_ROWS) * per_block * 4;
            // blocks stride over the sequences, so the workspace is bounded by the budget
            out.extend_rows = (workspace_budget / per_row).clamp(1, n);
            out.workspace_bytes = out.extend_rows * per_row;
            if ws.tensor_cores {
                // the tensor-core kernel may run this step's extend: room for either kernel
                let chunks_per_seq = seqs.chunks(6).map(|s| (s[5] - s[4]) as usize).collect::<Vec<_>>();
                out.workspace_bytes = out.workspace_bytes.max(tc_workspace_bytes(&chunks_per_seq, k, v, hv, workspace_budget));
            }
            out.regions = vec![capacity * 6, conv_snaps.len(), capacity * 6, chunks.len(), snap_slots.len()];
            out.tables = vec![conv_seqs, conv_snaps, seqs, chunks, snap_slots];
        }
        StepRef::Decode(batch) => {
            let n = batch.num_seqs().max(capacity);
            let slot = |i: usize| batch.slots().get(i).map_or(0, |s| s.index() as i64);
            out.tables = vec![(0..n).flat_map(|i| [i as i64, 1, slot(i), 1, 0, 0]).collect(), (0..n).map(slot).collect()];
        }
        StepRef::Verify(batch) => {
            let (n, d) = (batch.num_seqs().max(capacity), batch.draft());
            let slot = |i: usize| batch.slots().get(i).map_or(0, |s| s.index() as i64);
            let mut parents = batch.parents().to_vec();
            // padding requests draft a chain
            parents.extend((batch.num_seqs()..n).flat_map(|_| (0..d as i64).map(|t| t - 1)));
            out.tables =
                vec![(0..n).flat_map(|i| [(i * d) as i64, d as i64, slot(i), 1, 0, 0]).collect(), parents, (0..n).map(slot).collect()];
        }
        StepRef::Commit(batch) => {
            // Only the committed requests (a request accepted `None` is skipped).
            let mut targets = Vec::new();
            for c in batch.commits() {
                for dst in std::iter::once(c.slot).chain(c.snapshot) {
                    targets.extend([c.slot.index() as i64, c.step as i64, dst.index() as i64]);
                }
            }
            out.commit_targets = targets.len() / 3;
            out.regions = vec![capacity * 6];
            out.tables = vec![targets];
        }
        StepRef::CommitReplay(batch, replay) => {
            // Per committed request: (slot, path length, snapshot slot or -1), and
            // its path padded to D steps (a request accepted `None` is skipped).
            let (mut commits, mut paths) = (Vec::new(), Vec::new());
            for (c, path) in batch.commits().zip(&replay.paths) {
                commits.extend([c.slot.index() as i64, path.len() as i64, c.snapshot.map_or(-1, |s| s.index() as i64)]);
                paths.extend((0..replay.draft).map(|j| path.get(j).map_or(-1, |&t| t as i64)));
            }
            out.commit_targets = commits.len() / 3;
            out.regions = vec![capacity * 3, capacity * replay.draft];
            out.tables = vec![commits, paths];
        }
    }
    out.regions.resize(out.tables.len(), 0);
    for (r, t) in out.regions.iter_mut().zip(&out.tables) {
        *r = (*r).max(t.len());
    }
    out
}

/// The index tables of one step on the device (see the module docs).
///
/// Built by the dispatcher's `plan_*` methods, used through
/// [`CudaDispatcher::planned`](crate::CudaDispatcher::planned) by every layer
/// of the step, rebuilt for the next step.
pub struct StepPlan<L: Launcher> {
    capacity: usize,
    staging: Option<L::Staging>,
    device: Option<<L::Memory as DeviceMemory>::Buffer>,
    /// Bytes of staging (the uploaded tables' region) and of the device buffer (tables, then workspace).
    staging_bytes: usize,
    device_bytes: usize,
    built: Option<(StepBatch, PlanAddrs)>,
}

impl<L: Launcher> std::fmt::Debug for StepPlan<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepPlan")
            .field("capacity", &self.capacity)
            .field("staging_bytes", &self.staging_bytes)
            .field("device_bytes", &self.device_bytes)
            .field("built", &self.built.as_ref().map(|b| &b.0))
            .finish()
    }
}

impl<L: Launcher> Default for StepPlan<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: Launcher> StepPlan<L> {
    /// An empty plan: its buffers are allocated by the first build and grow
    /// when a later step's tables do not fit.
    pub fn new() -> Self {
        StepPlan { capacity: 0, staging: None, device: None, staging_bytes: 0, device_bytes: 0, built: None }
    }

    /// A plan laid out for `sequences` sequences whatever the batch (a batch
    /// bucket): decode and verify steps of up to that many requests then use
    /// the same device addresses, entries past the batch padded onto slot 0.
    pub fn with_capacity(sequences: usize) -> Self {
        StepPlan { capacity: sequences, ..Self::new() }
    }

    /// The sequences the tables are laid out for (0: each batch's own count).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Device bytes the plan holds (tables and extend workspace).
    pub fn device_bytes(&self) -> usize {
        self.device_bytes
    }

    /// Builds the tables of `step` into the staging memory (growing both
    /// buffers if needed) and queues their one upload.
    pub(crate) fn build(&mut self, launcher: &L, step: StepRef<'_>, dims: &ModelDims, ws: ExtendWorkspace) -> Result<PlanAddrs> {
        self.built = None;
        let t = host_tables(step, dims, self.capacity, ws);
        let mut offsets = [0usize; MAX_TABLES];
        let mut table_bytes = 0;
        for (o, &r) in offsets.iter_mut().zip(&t.regions) {
            *o = table_bytes;
            table_bytes += (r.max(1) * 8).next_multiple_of(ALIGN);
        }
        let ws_bytes = t.workspace_bytes.next_multiple_of(ALIGN);
        if self.staging.is_none() || table_bytes > self.staging_bytes || table_bytes + ws_bytes > self.device_bytes {
            let staging_bytes = table_bytes.max(self.staging_bytes).next_power_of_two();
            let device_bytes = (staging_bytes + ws_bytes).max(self.device_bytes);
            // the old buffers go first, so the peak is the new size
            (self.staging, self.device) = (None, None);
            self.staging = Some(launcher.alloc_staging(staging_bytes)?);
            self.device = Some(launcher.alloc_device(device_bytes)?);
            (self.staging_bytes, self.device_bytes) = (staging_bytes, device_bytes);
        }
        let (staging, device) = (self.staging.as_mut().expect("allocated above"), self.device.as_mut().expect("allocated above"));
        let bytes = launcher.staging_mut(staging)?;
        for (table, &o) in t.tables.iter().zip(&offsets) {
            for (j, x) in table.iter().enumerate() {
                bytes[o + 8 * j..o + 8 * j + 8].copy_from_slice(&x.to_le_bytes());
            }
        }
        launcher.upload(staging, device)?;
        let base = launcher.memory().addr(device);
        let addrs = PlanAddrs {
            tables: offsets.map(|o| base + o as u64),
            workspace: base + self.staging_bytes as u64,
            extend_rows: t.extend_rows,
            commit_targets: t.commit_targets,
        };
        self.built = Some((step.to_owned(), addrs));
        Ok(addrs)
    }

    /// The device tables, when the plan was built for exactly `step`'s batch.
    pub(crate) fn addrs_for(&self, step: StepRef<'_>) -> Result<PlanAddrs> {
        match &self.built {
            Some((b, addrs)) if step.is(b) => Ok(*addrs),
            Some((b, _)) => Err(Error::InvalidConfig(format!(
                "the step plan was built for another batch (a {} batch) than this {} call's",
                b.kind(),
                step.kind()
            ))),
            None => Err(Error::InvalidConfig(format!("the step plan is not built (a {} call)", step.kind()))),
        }
    }
}
