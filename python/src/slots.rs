//! Slots cross into Python as plain ints (raw `u64` handles). This pair is the
//! only place that knows how a [`Slot`] is represented, so a change of that
//! representation (e.g. generations packed into the handle) is made here alone.

use crate::errors::raise;
use deltanet::Slot;
use pyo3::PyResult;

/// A Python int handed back earlier by `Pool.alloc` / `Pool.fork` into a slot.
pub fn slot_from_py(raw: u64) -> PyResult<Slot> {
    u32::try_from(raw).map(Slot).map_err(|_| raise("SlotError", format!("slot handle {raw} is not a slot of any pool")))
}

/// The Python int for a slot.
pub fn slot_to_py(slot: Slot) -> u64 {
    u64::from(slot.0)
}

/// A sequence of Python ints into slots.
pub fn slots_from_py(raw: &[u64]) -> PyResult<Vec<Slot>> {
    raw.iter().map(|&r| slot_from_py(r)).collect()
}
