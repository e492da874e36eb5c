//! Recurrent states owned by deltanet on behalf of the fla-style functions.
//!
//! `chunk_gated_delta_rule(..., output_final_state=True)` runs its kernels on
//! a pool of its own (one layer, one slot per sequence). Instead of copying the
//! final states out into a fresh tensor, the call hands that pool to Python as
//! the final state: a [`StateView`] (array interface over the pool's recurrent
//! rows, which are exactly an `[N, HV, K, V]` f32 tensor). Passing such a
//! tensor back as `initial_state` with `inplace_final_state=True` (what a cache
//! does: the old state is replaced by the new one) finds the pool again here
//! and runs the next call on it in place — no state byte is copied in or out,
//! which is what decode speed comes down to.
//!
//! The registry holds weak references keyed by the rows' address: a view that
//! Python dropped frees its pool, and its entry is pruned on the next insert.

use crate::errors::{raise, IntoPy};
use crate::tensor::Borrowed;
use deltanet::{Backend, DType, LayoutKind, ModelDims, Pool, PoolConfig, Slot};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, TryLockError, Weak};

/// A one-layer pool whose slots `1..=n` hold the states of `n` sequences, in order.
/// Everything but the pool is immutable, so [`find`] never waits on a lock.
pub struct OwnedStates {
    /// The pool (f32 state, the backend's layout); locked for each call on it.
    pool: Mutex<Pool>,
    /// Slot of sequence `i` is `slots[i]` (index `i + 1`: the rows are contiguous).
    pub slots: Vec<Slot>,
    layout: LayoutKind,
    dims: ModelDims,
    /// Address and length in bytes of rows `1..=n` of the recurrent buffer.
    addr: u64,
    bytes: usize,
}

/// A shared [`OwnedStates`].
pub type SharedStates = Arc<OwnedStates>;

static LIVE: LazyLock<Mutex<HashMap<u64, Weak<OwnedStates>>>> = LazyLock::new(Default::default);

fn live() -> MutexGuard<'static, HashMap<u64, Weak<OwnedStates>>> {
    // Every mutation is one insert or retain: a panic cannot leave the map half-updated.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh zeroed one-layer pool of `n` slots, all allocated (the fla-style calls' pools).
pub fn one_layer_pool(backend: &Backend, n: usize, dims: ModelDims) -> PyResult<(Pool, Vec<Slot>)> {
    let pool = backend.new_pool(PoolConfig::new(1, n, dims)).py_err()?;
    let slots = pool.as_dyn().alloc(n).py_err()?;
    Ok((pool, slots))
}

impl OwnedStates {
    /// A fresh zeroed pool for `n` sequences on `backend` (whose layout is `layout`).
    pub fn new(backend: &Backend, layout: LayoutKind, n: usize, dims: ModelDims) -> PyResult<SharedStates> {
        let (pool, slots) = one_layer_pool(backend, n, dims)?;
        if slots.iter().enumerate().any(|(i, s)| s.index() != i + 1) {
            return Err(raise("InternalError", "a fresh pool handed out slots out of order"));
        }
        let d = pool
            .as_dyn()
            .descriptors()
            .into_iter()
            .find(|d| d.kind == deltanet::BufferKind::Temporal)
            .ok_or_else(|| raise("InternalError", "pool without a recurrent buffer"))?;
        let addr = d.addr + d.bytes_per_slot as u64;
        let bytes = d.bytes_per_slot * n;
        Ok(Arc::new(OwnedStates { pool: Mutex::new(pool), slots, layout, dims, addr, bytes }))
    }

    /// The pool, locked. Waits with the GIL released: another thread may hold
    /// the lock across a kernel it runs without the GIL.
    pub fn lock(&self, py: Python<'_>) -> MutexGuard<'_, Pool> {
        loop {
            match self.pool.try_lock() {
                Ok(g) => return g,
                // A kernel checks before it writes: a panic leaves the pool consistent.
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => py.allow_threads(std::thread::yield_now),
            }
        }
    }

    /// Whether `[lo, hi)` (bytes) overlaps the recurrent rows.
    pub fn overlaps(&self, lo: u64, hi: u64) -> bool {
        lo < self.addr + self.bytes as u64 && self.addr < hi
    }

    fn shape(&self) -> Vec<usize> {
        let d = &self.dims;
        let n = self.slots.len();
        match self.layout {
            LayoutKind::KMajor => vec![n, d.num_v_heads, d.head_k_dim, d.head_v_dim],
            LayoutKind::VMajor => vec![n, d.num_v_heads, d.head_v_dim, d.head_k_dim],
        }
    }
}

/// The pool whose recurrent rows `t` is (same address, shape, contiguous f32, same layout and dims), if any.
pub fn find(t: &Borrowed<'_>, layout: LayoutKind, dims: &ModelDims) -> Option<SharedStates> {
    let m = t.meta();
    if m.dtype() != DType::F32 || !m.is_contiguous() {
        return None;
    }
    let s = live().get(&t.addr())?.upgrade()?;
    (s.layout == layout && s.dims == *dims && s.shape() == t.shape()).then_some(s)
}

/// Publishes `s` as a tensor-like view (and registers it for [`find`]).
pub fn view(s: SharedStates) -> StateView {
    let (addr, shape) = (s.addr, s.shape());
    let mut map = live();
    map.retain(|_, w| w.strong_count() > 0);
    map.insert(addr, Arc::downgrade(&s));
    StateView { _states: s, addr, shape }
}

/// The final states of an fla-style call: rows `1..=N` of its pool's recurrent
/// buffer, f32, as numpy's array interface (torch wraps it without a copy).
/// Keeps the pool alive; writing into it while a call runs on it is a data race.
#[pyclass(module = "deltanet", frozen)]
pub struct StateView {
    _states: SharedStates,
    addr: u64,
    shape: Vec<usize>,
}

#[pymethods]
impl StateView {
    /// numpy's array interface (version 3): the pool's memory, writable.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("shape", pyo3::types::PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", "<f4")?;
        d.set_item("data", (self.addr, false))?;
        d.set_item("version", 3)?;
        Ok(d)
    }
}
