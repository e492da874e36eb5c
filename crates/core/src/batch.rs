//! Batch metadata for extend, decode, verify and commit, validated once at
//! construction against the pool it will run on. Kernels trust a validated
//! batch; at dispatch they only re-check that it belongs to the pool and that
//! its slots are still allocated.

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
    pub fn new<P: MambaStatePool + ?Sized>(pool: &P, cu_seqlens: &[usize], slots: &[Slot], has_initial_state: &[bool]) -> Result<Self> {
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
    /// Validates the slots (allocated, distinct).
    pub fn new<P: MambaStatePool + ?Sized>(pool: &P, slots: &[Slot]) -> Result<Self> {
        if slots.is_empty() {
            return Err(Error::LengthMismatch { name: "slots".into(), expected: 1, actual: 0 });
        }
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
/// parent step (`-1`: the slot's state) and writes scratch `[slot, t]`.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyBatch {
    pool: u64,
    slots: Vec<Slot>,
    draft: usize,
    parents: Vec<i64>,
}

impl VerifyBatch {
    /// A chain: token `t` follows token `t-1`.
    pub fn chain<P: MambaStatePool + ?Sized>(pool: &P, slots: &[Slot], draft: usize) -> Result<Self> {
        let parents: Vec<i64> = (0..slots.len()).flat_map(|_| (0..draft as i64).map(|t| t - 1)).collect();
        Self::tree(pool, slots, draft, &parents)
    }

    /// A tree: `parents[i*D + t]` is `-1` (root: the slot's state) or an earlier step `< t`.
    pub fn tree<P: MambaStatePool + ?Sized>(pool: &P, slots: &[Slot], draft: usize, parents: &[i64]) -> Result<Self> {
        let d = pool.geometry().draft();
        if d == 0 {
            return Err(Error::NoSpeculativeBuffers);
        }
        if draft != d {
            return Err(Error::DraftMismatch { index: 0, expected: d, actual: draft });
        }
        if slots.is_empty() {
            return Err(Error::LengthMismatch { name: "slots".into(), expected: 1, actual: 0 });
        }
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
/// scratch into its main slot, and optionally into a snapshot slot.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitBatch {
    pool: u64,
    slots: Vec<Slot>,
    accepted: Vec<usize>,
    snapshots: Vec<Option<Slot>>,
}

impl CommitBatch {
    /// Validates slots and accepted steps; `snapshots` is empty or one entry per request.
    pub fn new<P: MambaStatePool + ?Sized>(pool: &P, slots: &[Slot], accepted: &[usize], snapshots: &[Option<Slot>]) -> Result<Self> {
        let d = pool.geometry().draft();
        if d == 0 {
            return Err(Error::NoSpeculativeBuffers);
        }
        if accepted.len() != slots.len() {
            return Err(Error::LengthMismatch { name: "accepted".into(), expected: slots.len(), actual: accepted.len() });
        }
        if !snapshots.is_empty() && snapshots.len() != slots.len() {
            return Err(Error::LengthMismatch { name: "snapshots".into(), expected: slots.len(), actual: snapshots.len() });
        }
        for (i, &a) in accepted.iter().enumerate() {
            if a >= d {
                return Err(Error::AcceptedOutOfRange { index: i, accepted: a, draft: d });
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
    /// Slot per request.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
    /// Accepted step per request.
    pub fn accepted(&self) -> &[usize] {
        &self.accepted
    }
    /// Snapshot slot per request.
    pub fn snapshots(&self) -> &[Option<Slot>] {
        &self.snapshots
    }
}
