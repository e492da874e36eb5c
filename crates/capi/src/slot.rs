//! Slots cross the C ABI as `uint64_t`. This pair is the only place that
//! knows how a [`Slot`] is represented there, so a change of that
//! representation (a generation packed next to the index) is made here alone.

use crate::status::{dn_status, CResult, Failure};
use facade::Slot;

/// `uint64_t` value that names no slot (in `dn_batch_commit`'s snapshot slots).
pub const DN_SLOT_NONE: u64 = u64::MAX;

/// The C value of a slot.
pub fn to_raw(slot: Slot) -> u64 {
    slot.to_raw()
}

/// A slot from its C value (handed out earlier by `dn_pool_alloc` / `dn_pool_fork`):
/// index in the low 32 bits, generation in the high 32. `DN_SLOT_NONE` is
/// `DN_ERR_INVALID_ARGUMENT`; whether the slot is allocated in a given pool,
/// and of the current generation, is the pool's check (`DN_ERR_STALE_SLOT`).
pub fn from_raw(raw: u64) -> CResult<Slot> {
    if raw == DN_SLOT_NONE {
        return Err(Failure::new(dn_status::DN_ERR_INVALID_ARGUMENT, format!("slot value {raw:#x} is not a slot of any pool")));
    }
    Ok(Slot::from_raw(raw))
}

/// Many slots from C values.
pub fn from_raw_all(raw: &[u64]) -> CResult<Vec<Slot>> {
    raw.iter().map(|&r| from_raw(r)).collect()
}
