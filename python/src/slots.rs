//! Slots cross into Python as plain ints: the raw `u64` handle of
//! [`Slot::to_raw`] (index and generation), so a handle kept past a free is
//! refused by the pool as stale. This pair is the only place that converts.

use deltanet::Slot;
use pyo3::PyResult;

/// A Python int handed back earlier by `Pool.alloc` / `Pool.fork` into a slot.
/// Every `u64` is some handle; whether the pool accepts it is checked on use.
pub fn slot_from_py(raw: u64) -> PyResult<Slot> {
    Ok(Slot::from_raw(raw))
}

/// The Python int for a slot.
pub fn slot_to_py(slot: Slot) -> u64 {
    slot.to_raw()
}

/// A sequence of Python ints into slots.
pub fn slots_from_py(raw: &[u64]) -> PyResult<Vec<Slot>> {
    raw.iter().map(|&r| slot_from_py(r)).collect()
}
