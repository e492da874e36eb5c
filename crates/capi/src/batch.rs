//! Entry points that build validated batches from plain arrays. Each batch
//! is validated once, here, exactly as `deltanet::ExtendBatch::new` and
//! friends validate it in Rust; the operations only re-check that it belongs
//! to the pool and that its slots are still allocated.
//!
//! Thread safety: any thread; a batch handle is immutable and may be used by
//! several threads at once (each call still takes its pool's lock).

use crate::args;
use crate::handles::{self, dn_batch, dn_pool, BatchObj};
use crate::slot;
use crate::status::{dn_status, guard, CResult};
use crate::types::dn_snapshot;
use facade::{CommitBatch, DecodeBatch, ExtendBatch, Slot, Snapshot, VerifyBatch};

/// `int64_t` value of `dn_batch_commit`'s `accepted[i]` for a request whose
/// drafts were all rejected: the request is skipped.
pub const DN_ACCEPTED_NONE: i64 = -1;

/// Clears `out` (see [`clear`]) and reads the `n` slot handles of a batch's requests.
///
/// # Safety
/// `out` points to a writable handle, `slots` to `n` readable `uint64_t`.
unsafe fn request_slots(out: *mut *mut dn_batch, slots: *const u64, n: usize) -> CResult<Vec<Slot>> {
    // SAFETY: caller's contract.
    let raw = unsafe {
        clear(out)?;
        args::slice(slots, n, "slots")?
    };
    slot::from_raw_all(raw)
}

fn offsets(raw: &[i64]) -> CResult<Vec<usize>> {
    raw.iter()
        .enumerate()
        .map(|(i, &v)| usize::try_from(v).map_err(|_| args::invalid(format!("cu_seqlens[{i}] = {v} is negative"))))
        .collect()
}

/// Makes the output handle NULL first, so a failed call leaves no stale one.
///
/// # Safety
/// `out` points to a writable handle.
unsafe fn clear(out: *mut *mut dn_batch) -> CResult {
    // SAFETY: caller's contract.
    unsafe { args::write(out, std::ptr::null_mut(), "out") }
}

/// A prefill (or chunked-prefill continuation) batch of `num_seqs` packed
/// sequences: `cu_seqlens` has `num_seqs + 1` offsets from 0, strictly
/// increasing; one slot and one `has_initial_state` flag (0: start from
/// zero, 1: continue the slot's state) per sequence; `num_snapshots`
/// prefix-cache snapshot requests (may be 0 with `snapshots` NULL).
///
/// Thread safety: any thread; takes the pool's lock while validating.
///
/// # Safety
/// Each array points to the number of readable elements stated; `out` to a writable handle.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_batch_extend(
    pool: *const dn_pool,
    cu_seqlens: *const i64,
    num_seqs: usize,
    slots: *const u64,
    has_initial_state: *const u8,
    snapshots: *const dn_snapshot,
    num_snapshots: usize,
    out: *mut *mut dn_batch,
) -> dn_status {
    guard(|| {
        // SAFETY: caller's contract (for all four reads and the write).
        let (cu, sl, init, snaps) = unsafe {
            clear(out)?;
            (
                args::slice(cu_seqlens, num_seqs.saturating_add(1), "cu_seqlens")?,
                args::slice(slots, num_seqs, "slots")?,
                args::slice(has_initial_state, num_seqs, "has_initial_state")?,
                args::slice(snapshots, num_snapshots, "snapshots")?,
            )
        };
        let p = handles::pool(pool)?;
        let cu = offsets(cu)?;
        let sl = slot::from_raw_all(sl)?;
        let init: Vec<bool> = init.iter().map(|&f| args::flag(f, "has_initial_state")).collect::<CResult<_>>()?;
        let snaps: Vec<Snapshot> = snaps
            .iter()
            .map(|s| Ok(Snapshot { seq: s.seq, position: s.position, slot: slot::from_raw(s.slot)? }))
            .collect::<CResult<_>>()?;
        let g = handles::lock(&p)?;
        let dp = g.pool.as_dyn();
        let b = ExtendBatch::new(dp, &cu, &sl, &init)?.with_snapshots(dp, &snaps)?;
        // SAFETY: checked writable by `clear`.
        unsafe { out.write(handles::new_batch(BatchObj::Extend(b))) };
        Ok(())
    })
}

/// A decode batch: one token for each of `n` requests (distinct allocated slots).
///
/// Thread safety: any thread; takes the pool's lock while validating.
///
/// # Safety
/// `slots` points to `n` readable `uint64_t`; `out` to a writable handle.
#[no_mangle]
pub unsafe extern "C" fn dn_batch_decode(pool: *const dn_pool, slots: *const u64, n: usize, out: *mut *mut dn_batch) -> dn_status {
    guard(|| {
        // SAFETY: caller's contract.
        let sl = unsafe { request_slots(out, slots, n)? };
        let p = handles::pool(pool)?;
        let b = DecodeBatch::new(handles::lock(&p)?.pool.as_dyn(), &sl)?;
        // SAFETY: checked writable by `clear`.
        unsafe { out.write(handles::new_batch(BatchObj::Decode(b))) };
        Ok(())
    })
}

/// A speculative verify batch: the pool's `D` draft tokens for each of `n`
/// requests, packed request-major (`T = n * D`). `parents` NULL is a chain;
/// else `n * D` entries, `parents[i*D + t]` being -1 (the slot's state) or an
/// earlier token `< t` of the same request (a tree).
///
/// Thread safety: any thread; takes the pool's lock while validating.
///
/// # Safety
/// `slots` points to `n` readable `uint64_t`, `parents` (unless NULL) to
/// `n * D` readable `int64_t`; `out` to a writable handle.
#[no_mangle]
pub unsafe extern "C" fn dn_batch_verify(
    pool: *const dn_pool,
    slots: *const u64,
    n: usize,
    parents: *const i64,
    out: *mut *mut dn_batch,
) -> dn_status {
    guard(|| {
        // SAFETY: caller's contract.
        let sl = unsafe { request_slots(out, slots, n)? };
        let p = handles::pool(pool)?;
        let g = handles::lock(&p)?;
        let draft = g.pool.as_dyn().geometry().draft();
        // SAFETY: caller's contract (`n * D` entries, D being the pool's).
        let par = unsafe {
            if parents.is_null() {
                None
            } else {
                Some(args::slice(parents, n.saturating_mul(draft), "parents")?)
            }
        };
        let b = match par {
            None => VerifyBatch::chain(g.pool.as_dyn(), &sl)?,
            Some(par) => VerifyBatch::tree(g.pool.as_dyn(), &sl, par)?,
        };
        // SAFETY: checked writable by `clear`.
        unsafe { out.write(handles::new_batch(BatchObj::Verify(b))) };
        Ok(())
    })
}

/// A commit batch: for each of `n` requests, the last accepted draft step
/// `accepted[i]` (`0 <= a < D`) becomes its slot's state, or
/// `DN_ACCEPTED_NONE` (-1): nothing accepted, the request is skipped (its
/// slot and its verify stay as they are). `snapshot_slots` NULL, or `n`
/// entries each `DN_SLOT_NONE` or a slot to also receive the accepted step
/// (`DN_SLOT_NONE` for a skipped request).
///
/// Thread safety: any thread; takes the pool's lock while validating.
///
/// # Safety
/// `slots` and `accepted` point to `n` readable elements, `snapshot_slots`
/// (unless NULL) too; `out` to a writable handle.
#[no_mangle]
pub unsafe extern "C" fn dn_batch_commit(
    pool: *const dn_pool,
    slots: *const u64,
    n: usize,
    accepted: *const i64,
    snapshot_slots: *const u64,
    out: *mut *mut dn_batch,
) -> dn_status {
    guard(|| {
        // SAFETY: caller's contract.
        let (sl, acc, snaps) = unsafe {
            clear(out)?;
            let snaps = if snapshot_slots.is_null() { &[][..] } else { args::slice(snapshot_slots, n, "snapshot_slots")? };
            (args::slice(slots, n, "slots")?, args::slice(accepted, n, "accepted")?, snaps)
        };
        let p = handles::pool(pool)?;
        let sl = slot::from_raw_all(sl)?;
        let acc: Vec<Option<usize>> = acc
            .iter()
            .enumerate()
            .map(|(i, &a)| match a {
                DN_ACCEPTED_NONE => Ok(None),
                _ => usize::try_from(a)
                    .map(Some)
                    .map_err(|_| args::invalid(format!("accepted[{i}] = {a} is negative and not DN_ACCEPTED_NONE"))),
            })
            .collect::<CResult<_>>()?;
        let snaps = snaps
            .iter()
            .map(|&s| if s == slot::DN_SLOT_NONE { Ok(None) } else { slot::from_raw(s).map(Some) })
            .collect::<CResult<Vec<_>>>()?;
        let b = CommitBatch::new(handles::lock(&p)?.pool.as_dyn(), &sl, &acc, &snaps)?;
        // SAFETY: checked writable by `clear`.
        unsafe { out.write(handles::new_batch(BatchObj::Commit(b))) };
        Ok(())
    })
}

/// Packed tokens T of a batch (0 for a commit batch).
///
/// Thread safety: any thread (a batch is immutable).
///
/// # Safety
/// `out` points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_batch_tokens(batch: *const dn_batch, out: *mut usize) -> dn_status {
    guard(|| {
        let b = handles::batch(batch)?;
        let t = match &*b {
            BatchObj::Extend(b) => b.tokens(),
            BatchObj::Decode(b) => b.tokens(),
            BatchObj::Verify(b) => b.tokens(),
            BatchObj::Commit(_) => 0,
        };
        // SAFETY: caller's contract.
        unsafe { args::write(out, t, "out") }
    })
}

/// Destroys a batch handle.
///
/// Thread safety: any thread; a call running with the batch finishes first.
#[no_mangle]
pub extern "C" fn dn_batch_destroy(batch: *mut dn_batch) -> dn_status {
    guard(|| handles::destroy_batch(batch))
}
