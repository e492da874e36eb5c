//! Batch metadata for extend, decode, verify and commit, validated once at
//! construction against the pool it will run on. Kernels trust a validated
//! batch; at dispatch they only re-check that it belongs to the pool and that
//! its slots are still allocated.
//!
//! # Building a batch while holding the pool mutably
//! A batch does not borrow the pool: it keeps the pool's id and the slot
//! handles (with their generations), so it can be built right before the call
//! that runs it. An engine that holds `pool: &mut StatePool` can build it in
//! the call's arguments, `d.decode(pool, layer, &DecodeBatch::new(pool, &slots)?, io)`
//! (the implicit reborrow of `pool` starts only when the call runs); an engine
//! that owns the pool binds the batch first (`let b = DecodeBatch::new(&pool, &slots)?;`),
//! since Rust refuses `&mut pool` and `&pool` in one argument list.
//!
//! # Empty batches
//! One rule everywhere: an operation on no requests is refused with
//! [`Error::EmptyBatch`] and changes nothing. That holds for every batch
//! (an extend of `cu_seqlens = [0]`, a decode, verify or commit of no slots)
//! and for the pool's `alloc(0)`, `free` and `zero` of no slots. A commit
//! whose requests are all skipped ([`CommitBatch::new`]) is not empty: it
//! names its requests and commits none of them.

use crate::error::{Error, Result};
use crate::pool::{MambaStatePool, Slot};
use std::ops::Range;

/// A snapshot request: after `position` tokens of sequence `seq` of this
/// extend (1..=len), copy the state (recurrent and conv) into `slot` (prefix caching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Sequence index in the batch.
    pub seq: usize,
    /// Tokens of this extend after which the state is taken (1..=len).
    pub position: usize,
    /// Destination slot (allocated, not in the batch, not named twice).
    pub slot: Slot,
}

fn check_pool_id<P: MambaStatePool + ?Sized>(batch_pool: u64, pool: &P, slots: &[Slot]) -> Result<()> {
    if batch_pool != pool.id() {
        return Err(Error::ForeignBatch { batch_pool, pool: pool.id() });
    }
    pool.check_slots(slots)
}

/// [`Error::EmptyBatch`] for an operation on no requests (the rule in the [module docs](self)).
pub(crate) fn check_not_empty(what: &'static str, requests: usize) -> Result<()> {
    if requests == 0 {
        return Err(Error::EmptyBatch { what });
    }
    Ok(())
}

/// Validates `cu_seqlens` (N+1 offsets from 0, strictly increasing).
pub fn validate_cu_seqlens(cu_seqlens: &[usize]) -> Result<()> {
    if cu_seqlens.len() < 2 {
        return Err(Error::BadCuSeqlens {
            index: 0,
            value: cu_seqlens.len(),
            reason: "needs at least 2 offsets (N+1 for N >= 1 sequences)".into(),
        });
    }
    if cu_seqlens[0] != 0 {
        return Err(Error::BadCuSeqlens { index: 0, value: cu_seqlens[0], reason: "must start at 0".into() });
    }
    for i in 1..cu_seqlens.len() {
        if cu_seqlens[i] <= cu_seqlens[i - 1] {
            return Err(Error::BadCuSeqlens {
                index: i,
                value: cu_seqlens[i],
                reason: format!("sequence {} would have length <= 0 (previous offset {})", i - 1, cu_seqlens[i - 1]),
            });
        }
    }
    Ok(())
}

/// Prefill (or chunked-prefill continuation) of N packed sequences.
///
/// ```
/// use deltanet_core::*;
/// let dims = ModelDims::builder().key_heads(1).value_heads(1).head_k_dim(4).head_v_dim(4).conv_width(4).build().unwrap();
/// let caps = Capabilities::host_reference(LayoutKind::KMajor);
/// let config = PoolConfig::builder(dims).layers(1).slots(4).build().unwrap();
/// let pool: StatePool<HostMemory, KMajor> = StatePool::new(HostMemory, config, &caps).unwrap();
/// let s = pool.alloc(2).unwrap();
/// let b = ExtendBatch::new(&pool, &[0, 3, 8], &s, &[false, true]).unwrap();
/// assert_eq!(b.tokens(), 8);
/// assert!(matches!(ExtendBatch::new(&pool, &[0, 3, 3], &s, &[false, true]), Err(Error::BadCuSeqlens { index: 2, .. })));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendBatch {
    pool: u64,
    cu_seqlens: Vec<usize>,
    slots: Vec<Slot>,
    has_initial_state: Vec<bool>,
    snapshots: Vec<Snapshot>,
}

impl ExtendBatch {
    /// Validates `cu_seqlens` (N+1), one slot and one `has_initial_state` flag per sequence.
    /// `cu_seqlens = [0]` (no sequences) is [`Error::EmptyBatch`].
    pub fn new<P: MambaStatePool + ?Sized>(pool: &P, cu_seqlens: &[usize], slots: &[Slot], has_initial_state: &[bool]) -> Result<Self> {
        if cu_seqlens == [0] {
            check_not_empty("extend", 0)?;
        }
        validate_cu_seqlens(cu_seqlens)?;
        let n = cu_seqlens.len() - 1;
        if slots.len() != n {
            return Err(Error::LengthMismatch { name: "slots".into(), expected: n, actual: slots.len() });
        }
        if has_initial_state.len() != n {
            return Err(Error::LengthMismatch { name: "has_initial_state".into(), expected: n, actual: has_initial_state.len() });
        }
        pool.check_slots(slots)?;
        Ok(ExtendBatch {
            pool: pool.id(),
            cu_seqlens: cu_seqlens.to_vec(),
            slots: slots.to_vec(),
            has_initial_state: has_initial_state.to_vec(),
            snapshots: Vec::new(),
        })
    }

    /// Adds snapshot requests (validated: sequence, position, slot).
    pub fn with_snapshots<P: MambaStatePool + ?Sized>(mut self, pool: &P, snapshots: &[Snapshot]) -> Result<Self> {
        let targets: Vec<Slot> = snapshots.iter().map(|s| s.slot).collect();
        pool.check_slots(&targets)?;
        for (i, s) in snapshots.iter().enumerate() {
            if s.seq >= self.num_seqs() {
                return Err(Error::BadSnapshot { index: i, seq: s.seq, position: s.position, len: 0 });
            }
            let len = self.seq_len(s.seq);
            if s.position == 0 || s.position > len {
                return Err(Error::BadSnapshot { index: i, seq: s.seq, position: s.position, len });
            }
            if let Some(j) = self.slots.iter().position(|&b| b == s.slot) {
                return Err(Error::DuplicateSlot { slot: s.slot.index_u32(), first: j, second: i });
            }
        }
        self.snapshots = snapshots.to_vec();
        Ok(self)
    }

    /// Errors unless this batch was validated against `pool` and its slots are still allocated.
    pub fn check_pool<P: MambaStatePool + ?Sized>(&self, pool: &P) -> Result<()> {
        check_pool_id(self.pool, pool, &self.slots)?;
        let targets: Vec<Slot> = self.snapshots.iter().map(|s| s.slot).collect();
        pool.check_slots(&targets)
    }

    /// Sequences N.
    pub fn num_seqs(&self) -> usize {
        self.slots.len()
    }
    /// Packed tokens T.
    pub fn tokens(&self) -> usize {
        *self.cu_seqlens.last().expect("validated")
    }
    /// The N+1 offsets.
    pub fn cu_seqlens(&self) -> &[usize] {
        &self.cu_seqlens
    }
    /// Token range of sequence `i`.
    pub fn seq_range(&self, i: usize) -> Range<usize> {
        self.cu_seqlens[i]..self.cu_seqlens[i + 1]
    }
    /// Length of sequence `i`.
    pub fn seq_len(&self, i: usize) -> usize {
        self.cu_seqlens[i + 1] - self.cu_seqlens[i]
    }
    /// Slot per sequence.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
    /// Whether each sequence continues its slot's state (else starts from zero).
    pub fn has_initial_state(&self) -> &[bool] {
        &self.has_initial_state
    }
    /// All snapshot requests.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }
    /// Snapshot requests of sequence `i`, in the order given.
    pub fn snapshots_of(&self, i: usize) -> impl Iterator<Item = &Snapshot> {
        self.snapshots.iter().filter(move |s| s.seq == i)
    }
}

/// One token for each of N requests.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeBatch {
    pool: u64,
    slots: Vec<Slot>,
}

impl DecodeBatch {
    /// Validates the slots (at least one, allocated, distinct).
    pub fn new<P: MambaStatePool + ?Sized>(pool: &P, slots: &[Slot]) -> Result<Self> {
        check_not_empty("decode", slots.len())?;
        pool.check_slots(slots)?;
        Ok(DecodeBatch { pool: pool.id(), slots: slots.to_vec() })
    }
    /// Errors unless validated against `pool` and still allocated.
    pub fn check_pool<P: MambaStatePool + ?Sized>(&self, pool: &P) -> Result<()> {
        check_pool_id(self.pool, pool, &self.slots)
    }
    /// Requests N (= tokens).
    pub fn num_seqs(&self) -> usize {
        self.slots.len()
    }
    /// Tokens T = N.
    pub fn tokens(&self) -> usize {
        self.slots.len()
    }
    /// Slot per request.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

/// D draft tokens for each of N requests, packed request-major (`T = N*D`),
/// as a chain or a tree. Step `t` of request `i` starts from the state of its
/// parent step (`-1`: the slot's state) and writes scratch `[slot, t]`. D is
/// the pool's ([`PoolConfig::speculative`](crate::PoolConfigBuilder::speculative)):
/// the speculative buffers hold D steps per slot, so a verify always runs D.
///
/// ```
/// use deltanet_core::*;
/// let dims = ModelDims::builder().key_heads(1).value_heads(1).head_k_dim(4).head_v_dim(4).conv_width(4).build()?;
/// let config = PoolConfig::builder(dims).layers(1).slots(4).speculative(3).build()?;
/// let pool: StatePool<HostMemory, VMajor> = StatePool::new(HostMemory, config, &Capabilities::host_reference(LayoutKind::VMajor))?;
/// let s = pool.alloc(2)?;
/// assert_eq!(VerifyBatch::chain(&pool, &s)?.tokens(), 6);
/// // request 0: steps 1 and 2 both follow step 0; request 1: a chain
/// let tree = VerifyBatch::tree(&pool, &s, &[-1, 0, 0, -1, 0, 1])?;
/// assert_eq!((tree.parent(0, 2), tree.parent(1, 2)), (Some(0), Some(1)));
/// assert!(matches!(VerifyBatch::chain(&pool, &[]), Err(Error::EmptyBatch { .. })));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyBatch {
    pool: u64,
    slots: Vec<Slot>,
    draft: usize,
    parents: Vec<i64>,
}

impl VerifyBatch {
    /// A chain of the pool's D draft tokens per request: token `t` follows token `t-1`.
    pub fn chain<P: MambaStatePool + ?Sized>(pool: &P, slots: &[Slot]) -> Result<Self> {
        let d = pool.geometry().draft();
        let parents: Vec<i64> = (0..slots.len()).flat_map(|_| (0..d as i64).map(|t| t - 1)).collect();
        Self::tree(pool, slots, &parents)
    }

    /// A tree of the pool's D draft tokens per request: `parents[i*D + t]` is
    /// `-1` (root: the slot's state) or an earlier step `< t`.
    pub fn tree<P: MambaStatePool + ?Sized>(pool: &P, slots: &[Slot], parents: &[i64]) -> Result<Self> {
        let draft = pool.geometry().draft();
        if draft == 0 {
            return Err(Error::NoSpeculativeBuffers);
        }
        check_not_empty("verify", slots.len())?;
        if parents.len() != slots.len() * draft {
            return Err(Error::LengthMismatch { name: "parents".into(), expected: slots.len() * draft, actual: parents.len() });
        }
        for (i, p) in parents.chunks_exact(draft).enumerate() {
            for (t, &parent) in p.iter().enumerate() {
                if parent < -1 || parent >= t as i64 {
                    return Err(Error::BadParent { index: i, token: t, parent });
                }
            }
        }
        pool.check_slots(slots)?;
        Ok(VerifyBatch { pool: pool.id(), slots: slots.to_vec(), draft, parents: parents.to_vec() })
    }

    /// Errors unless validated against `pool` and still allocated.
    pub fn check_pool<P: MambaStatePool + ?Sized>(&self, pool: &P) -> Result<()> {
        check_pool_id(self.pool, pool, &self.slots)
    }
    /// Requests N.
    pub fn num_seqs(&self) -> usize {
        self.slots.len()
    }
    /// Draft tokens per request D.
    pub fn draft(&self) -> usize {
        self.draft
    }
    /// Tokens T = N*D.
    pub fn tokens(&self) -> usize {
        self.slots.len() * self.draft
    }
    /// Slot per request.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
    /// Parent of step `t` of request `i` (`None`: the slot's state).
    pub fn parent(&self, i: usize, t: usize) -> Option<usize> {
        let p = self.parents[i * self.draft + t];
        (p >= 0).then_some(p as usize)
    }
    /// All parents, request-major.
    pub fn parents(&self) -> &[i64] {
        &self.parents
    }
}

/// For each request, the last accepted draft step `a` (< D) to copy from
/// scratch into its main slot, and optionally into a snapshot slot; or `None`:
/// nothing of this request's drafts was accepted, and the request is skipped.
///
/// A skipped request's slot is left as it is (state, conv state and scratch),
/// so its verify stays current: it may be committed later (for instance after
/// the engine has re-scored its drafts) as long as nothing wrote its state in
/// between. Its slot must still be allocated, it needs no current verify, and
/// it cannot name a snapshot slot (there is no accepted step to copy).
///
/// This is the batch of the one commit an engine calls,
/// [`KernelDispatcher::commit`](crate::KernelDispatcher::commit).
///
/// ```
/// use deltanet_core::*;
/// let dims = ModelDims::builder().key_heads(1).value_heads(1).head_k_dim(4).head_v_dim(4).conv_width(4).build()?;
/// let config = PoolConfig::builder(dims).layers(1).slots(4).speculative(3).build()?;
/// let pool: StatePool<HostMemory, VMajor> = StatePool::new(HostMemory, config, &Capabilities::host_reference(LayoutKind::VMajor))?;
/// let s = pool.alloc(2)?;
/// // request 0 accepted its first two drafts (step 1); request 1 none
/// let b = CommitBatch::new(&pool, &s, &[Some(1), None], &[])?;
/// assert_eq!(b.commits().map(|c| (c.request, c.step)).collect::<Vec<_>>(), [(0, 1)]);
/// assert!(matches!(CommitBatch::new(&pool, &s, &[Some(3), None], &[]), Err(Error::AcceptedOutOfRange { .. })));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CommitBatch {
    pool: u64,
    slots: Vec<Slot>,
    accepted: Vec<Option<usize>>,
    snapshots: Vec<Option<Slot>>,
}

/// One request a [`CommitBatch`] commits (skipped requests have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Request index in the batch.
    pub request: usize,
    /// Its slot.
    pub slot: Slot,
    /// The accepted scratch step copied into the slot.
    pub step: usize,
    /// The snapshot slot that also receives the step, if any.
    pub snapshot: Option<Slot>,
}

impl CommitBatch {
    /// Validates slots (at least one) and accepted steps (`Some(a)`, `a < D`,
    /// or `None` to skip the request); `snapshots` is empty or one entry per
    /// request, `None` for every skipped one.
    pub fn new<P: MambaStatePool + ?Sized>(
        pool: &P,
        slots: &[Slot],
        accepted: &[Option<usize>],
        snapshots: &[Option<Slot>],
    ) -> Result<Self> {
        let d = pool.geometry().draft();
        if d == 0 {
            return Err(Error::NoSpeculativeBuffers);
        }
        check_not_empty("commit", slots.len())?;
        if accepted.len() != slots.len() {
            return Err(Error::LengthMismatch { name: "accepted".into(), expected: slots.len(), actual: accepted.len() });
        }
        if !snapshots.is_empty() && snapshots.len() != slots.len() {
            return Err(Error::LengthMismatch { name: "snapshots".into(), expected: slots.len(), actual: snapshots.len() });
        }
        for (i, &a) in accepted.iter().enumerate() {
            match a {
                Some(a) if a >= d => return Err(Error::AcceptedOutOfRange { index: i, accepted: a, draft: d }),
                None if snapshots.get(i).is_some_and(Option::is_some) => return Err(Error::SnapshotOfSkipped { index: i }),
                _ => {}
            }
        }
        let mut all: Vec<Slot> = slots.to_vec();
        all.extend(snapshots.iter().flatten());
        pool.check_slots(&all)?;
        let snapshots = if snapshots.is_empty() { vec![None; slots.len()] } else { snapshots.to_vec() };
        Ok(CommitBatch { pool: pool.id(), slots: slots.to_vec(), accepted: accepted.to_vec(), snapshots })
    }
    /// Errors unless validated against `pool` and still allocated.
    pub fn check_pool<P: MambaStatePool + ?Sized>(&self, pool: &P) -> Result<()> {
        let mut all: Vec<Slot> = self.slots.clone();
        all.extend(self.snapshots.iter().flatten());
        check_pool_id(self.pool, pool, &all)
    }
    /// Slot per request (skipped ones included).
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
    /// Accepted step per request (`None`: skipped).
    pub fn accepted(&self) -> &[Option<usize>] {
        &self.accepted
    }
    /// Snapshot slot per request.
    pub fn snapshots(&self) -> &[Option<Slot>] {
        &self.snapshots
    }
    /// The requests this commit copies, in batch order: what a commit kernel
    /// iterates (skipped requests are not among them).
    pub fn commits(&self) -> impl Iterator<Item = Commit> + '_ {
        self.slots
            .iter()
            .zip(&self.accepted)
            .zip(&self.snapshots)
            .enumerate()
            .filter_map(|(request, ((&slot, &a), &snapshot))| a.map(|step| Commit { request, slot, step, snapshot }))
    }
}
