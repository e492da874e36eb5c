//! Batch planning the backends share: where an extend is cut (chunk
//! boundaries and snapshot positions), which slot each entry reads, and the
//! paths and chain segments of a draft tree. Pure functions of a validated
//! batch, so every backend cuts the same batch the same way and none writes
//! its own copy.

use crate::batch::ExtendBatch;
use crate::slot::Slot;
use std::ops::Range;

/// A token range of one sequence of an extend, run as one unit: after it the
/// sequence's state is in its slot (and copied to `snapshots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Sequence index in the batch.
    pub seq: usize,
    /// Packed token range.
    pub tokens: Range<usize>,
    /// Starts from the slot's state (an earlier piece's, or the sequence's
    /// initial state); else from zeros.
    pub from_slot: bool,
    /// Slots that receive the state at the end of the piece.
    pub snapshots: Vec<Slot>,
}

/// Cuts every sequence of `batch` at its snapshot positions and, with
/// `chunk`, every `chunk` tokens from the sequence's start; pieces in batch
/// order, then token order.
///
/// ```
/// use deltanet_core::*;
/// let dims = ModelDims::new(1, 1, 4, 4, 4).unwrap();
/// let caps = Capabilities::host_reference(LayoutKind::KMajor);
/// let pool: StatePool<HostMemory, KMajor> = StatePool::new(HostMemory, PoolConfig::new(1, 4, dims), &caps).unwrap();
/// let s = pool.alloc(3).unwrap();
/// let b = ExtendBatch::new(&pool, &[0, 150], &s[..1], &[false]).unwrap()
///     .with_snapshots(&pool, &[Snapshot { seq: 0, position: 100, slot: s[1] }]).unwrap();
/// let cuts: Vec<_> = plan::extend_pieces(&b, Some(64)).iter().map(|p| p.tokens.clone()).collect();
/// assert_eq!(cuts, [0..64, 64..100, 100..128, 128..150]);
/// assert_eq!(plan::extend_pieces(&b, None).len(), 2);
/// ```
pub fn extend_pieces(batch: &ExtendBatch, chunk: Option<usize>) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(batch.num_seqs());
    for seq in 0..batch.num_seqs() {
        let r = batch.seq_range(seq);
        let mut cuts: Vec<usize> = match chunk {
            Some(c) => (c..r.len()).step_by(c.max(1)).collect(),
            None => Vec::new(),
        };
        cuts.extend(batch.snapshots_of(seq).map(|s| s.position).filter(|&p| p < r.len()));
        cuts.push(r.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut start = 0;
        for end in cuts {
            pieces.push(Piece {
                seq,
                tokens: r.start + start..r.start + end,
                from_slot: start > 0 || batch.has_initial_state()[seq],
                snapshots: batch.snapshots_of(seq).filter(|s| s.position == end).map(|s| s.slot).collect(),
            });
            start = end;
        }
    }
    pieces
}

/// The slot indices as a device table (`i64`, what every kernel's index table holds).
pub fn slot_indices(slots: &[Slot]) -> Vec<i64> {
    slots.iter().map(|s| s.index() as i64).collect()
}

/// A run of draft steps `[start, end)` of one request in which each step's
/// parent is the step before; the first step's parent is `parent` (`None`:
/// the slot's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSegment {
    /// First step.
    pub start: usize,
    /// One past the last step.
    pub end: usize,
    /// Parent of `start`.
    pub parent: Option<usize>,
}

/// Splits one request's draft steps (`parents`, `-1` for a root) into chain
/// segments: a chain is one segment, a tree one per branch.
///
/// ```
/// use deltanet_core::plan::{chain_segments, ChainSegment};
/// assert_eq!(chain_segments(&[-1, 0, 1]), [ChainSegment { start: 0, end: 3, parent: None }]);
/// assert_eq!(chain_segments(&[-1, 0, 0]).len(), 2);
/// ```
pub fn chain_segments(parents: &[i64]) -> Vec<ChainSegment> {
    let mut out: Vec<ChainSegment> = Vec::new();
    for (t, &p) in parents.iter().enumerate() {
        match out.last_mut() {
            Some(last) if p == t as i64 - 1 && last.end == t => last.end = t + 1,
            _ => out.push(ChainSegment { start: t, end: t + 1, parent: (p >= 0).then_some(p as usize) }),
        }
    }
    out
}

/// The steps on the path from the root to step `t` (inclusive), root first.
///
/// ```
/// assert_eq!(deltanet_core::plan::path_to(&[-1, 0, 0, 2], 3), [0, 2, 3]);
/// ```
pub fn path_to(parents: &[i64], t: usize) -> Vec<usize> {
    let mut path = vec![t];
    let mut cur = parents[t];
    while cur >= 0 {
        path.push(cur as usize);
        cur = parents[cur as usize];
    }
    path.reverse();
    path
}
