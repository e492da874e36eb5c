//! What a kernel does to a pool, declared when it takes the pool's buffers
//! ([`StatePool::kernel_parts`](crate::StatePool::kernel_parts)): the pool
//! re-checks the batch against its slots' current generations and keeps, per
//! slot and layer, whether the speculative scratch holds a current verify.

use crate::batch::{CommitBatch, DecodeBatch, ExtendBatch, VerifyBatch};
use crate::error::Result;
use crate::pool::{MambaStatePool, Slot};

/// The kernel about to run on a pool, with its validated batch.
#[derive(Debug, Clone, Copy)]
pub enum KernelAccess<'b> {
    /// `extend` or `conv_extend`: writes the main state of the batch's slots
    /// and of its snapshot slots.
    Extend(&'b ExtendBatch),
    /// `decode` or `conv_update`: writes the main state of the batch's slots.
    Decode(&'b DecodeBatch),
    /// `verify`: writes the scratch states of the batch's slots, which then
    /// hold a current verify.
    Verify(&'b VerifyBatch),
    /// `conv_verify`: writes the conv windows of the batch's slots only.
    ConvVerify(&'b VerifyBatch),
    /// `commit`: needs a current verify of every slot it commits, consumes
    /// it, and writes the main state of those slots and their snapshot slots
    /// (a skipped request's slot, and its verify, are left as they are).
    Commit(&'b CommitBatch),
}

impl KernelAccess<'_> {
    /// The batch was validated against `pool` and names only slots allocated
    /// under their current generation.
    pub(crate) fn check_pool<P: MambaStatePool + ?Sized>(&self, pool: &P) -> Result<()> {
        match self {
            KernelAccess::Extend(b) => b.check_pool(pool),
            KernelAccess::Decode(b) => b.check_pool(pool),
            KernelAccess::Verify(b) | KernelAccess::ConvVerify(b) => b.check_pool(pool),
            KernelAccess::Commit(b) => b.check_pool(pool),
        }
    }

    /// Calls `f` for each slot whose main state (recurrent or conv) the
    /// kernel writes: a verify of it taken before is stale afterwards. A
    /// visitor rather than a `Vec`, so the bookkeeping after every kernel call
    /// allocates nothing.
    pub(crate) fn for_each_main_write(&self, f: impl FnMut(Slot)) {
        match self {
            KernelAccess::Extend(b) => b.slots().iter().copied().chain(b.snapshots().iter().map(|s| s.slot)).for_each(f),
            KernelAccess::Decode(b) => b.slots().iter().copied().for_each(f),
            KernelAccess::Verify(_) | KernelAccess::ConvVerify(_) => {}
            KernelAccess::Commit(b) => b.commits().flat_map(|c| std::iter::once(c.slot).chain(c.snapshot)).for_each(f),
        }
    }
}
