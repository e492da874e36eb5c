//! The registry of live handles. A C handle is never dereferenced: its
//! pointer value is a key into this registry, so a NULL, destroyed, forged
//! or wrong-kind handle is `DN_ERR_INVALID_HANDLE`, never a crash. Keys are
//! never reused, so a destroyed handle stays invalid for the process's life.
//!
//! Objects are reference-counted: destroying a handle removes its key, and a
//! call already running on it keeps the object alive until it returns. A
//! pool sits behind a mutex, which serialises every call on one pool (the
//! thread-safety rule the header states) without ever racing.

use crate::status::{dn_status, CResult, Failure};
use facade::{Backend, CommitBatch, DecodeBatch, ExtendBatch, Pool, VerifyBatch};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// A backend handle (opaque to C).
#[allow(non_camel_case_types)]
pub struct dn_backend {
    _opaque: [u8; 0],
}

/// A pool handle (opaque to C).
#[allow(non_camel_case_types)]
pub struct dn_pool {
    _opaque: [u8; 0],
}

/// A validated batch handle (opaque to C): extend, decode, verify or commit.
#[allow(non_camel_case_types)]
pub struct dn_batch {
    _opaque: [u8; 0],
}

/// A backend and the C copy of its name (returned by `dn_backend_capabilities`).
pub struct BackendObj {
    /// The backend.
    pub backend: Backend,
    /// NUL-terminated name, alive as long as the handle.
    pub name: CString,
}

/// A pool and the backend it was made by.
pub struct PoolObj {
    /// The backend that made the pool (kept alive by the pool).
    pub backend: Arc<BackendObj>,
    /// The pool.
    pub pool: Pool,
}

/// A validated batch.
pub enum BatchObj {
    /// Extend (prefill).
    Extend(ExtendBatch),
    /// Decode.
    Decode(DecodeBatch),
    /// Verify (chain or tree).
    Verify(VerifyBatch),
    /// Commit.
    Commit(CommitBatch),
}

impl BatchObj {
    /// Its kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            BatchObj::Extend(_) => "extend",
            BatchObj::Decode(_) => "decode",
            BatchObj::Verify(_) => "verify",
            BatchObj::Commit(_) => "commit",
        }
    }
}

enum Entry {
    Backend(Arc<BackendObj>),
    Pool(Arc<Mutex<PoolObj>>),
    Batch(Arc<BatchObj>),
}

#[derive(Default)]
struct Registry {
    next: u64,
    live: HashMap<usize, Entry>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    // Every mutation of the registry is a single insert or remove, so a
    // panic elsewhere cannot leave it inconsistent: poisoning is ignored.
    R.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

fn insert(e: Entry) -> usize {
    let mut r = registry();
    r.next += 1;
    // Small, odd-looking keys: never a real object's address, so a pointer
    // from elsewhere (or an uninitialised one) is very unlikely to be live.
    let key = ((r.next as usize) << 4) | 0x9;
    r.live.insert(key, e);
    key
}

fn invalid(what: &str, key: usize) -> Failure {
    if key == 0 {
        Failure::new(dn_status::DN_ERR_NULL_POINTER, format!("{what} handle is NULL"))
    } else {
        Failure::new(
            dn_status::DN_ERR_INVALID_HANDLE,
            format!("{what} handle {key:#x} is not live (destroyed, never created, or another kind)"),
        )
    }
}

/// Registers a backend.
pub fn new_backend(b: BackendObj) -> *mut dn_backend {
    insert(Entry::Backend(Arc::new(b))) as *mut dn_backend
}

/// Registers a pool.
pub fn new_pool(p: PoolObj) -> *mut dn_pool {
    insert(Entry::Pool(Arc::new(Mutex::new(p)))) as *mut dn_pool
}

/// Registers a batch.
pub fn new_batch(b: BatchObj) -> *mut dn_batch {
    insert(Entry::Batch(Arc::new(b))) as *mut dn_batch
}

/// The live backend behind `h`.
pub fn backend(h: *const dn_backend) -> CResult<Arc<BackendObj>> {
    match registry().live.get(&(h as usize)) {
        Some(Entry::Backend(b)) => Ok(b.clone()),
        _ => Err(invalid("backend", h as usize)),
    }
}

/// The live pool behind `h`.
pub fn pool(h: *const dn_pool) -> CResult<Arc<Mutex<PoolObj>>> {
    match registry().live.get(&(h as usize)) {
        Some(Entry::Pool(p)) => Ok(p.clone()),
        _ => Err(invalid("pool", h as usize)),
    }
}

/// The live batch behind `h`.
pub fn batch(h: *const dn_batch) -> CResult<Arc<BatchObj>> {
    match registry().live.get(&(h as usize)) {
        Some(Entry::Batch(b)) => Ok(b.clone()),
        _ => Err(invalid("batch", h as usize)),
    }
}

/// Locks a pool for one call. A pool whose lock was held by a call that
/// panicked may be half-written, so it refuses every later call.
pub fn lock(p: &Mutex<PoolObj>) -> CResult<MutexGuard<'_, PoolObj>> {
    p.lock().map_err(|_| Failure::new(dn_status::DN_ERR_INTERNAL, "pool unusable: an earlier call on it failed internally (destroy it)"))
}

/// Destroys a backend handle (pools made from it keep it alive).
pub fn destroy_backend(h: *mut dn_backend) -> CResult {
    remove(h as usize, "backend", |e| matches!(e, Entry::Backend(_)))
}

/// Destroys a pool handle.
pub fn destroy_pool(h: *mut dn_pool) -> CResult {
    remove(h as usize, "pool", |e| matches!(e, Entry::Pool(_)))
}

/// Destroys a batch handle.
pub fn destroy_batch(h: *mut dn_batch) -> CResult {
    remove(h as usize, "batch", |e| matches!(e, Entry::Batch(_)))
}

fn remove(key: usize, what: &str, is_kind: impl Fn(&Entry) -> bool) -> CResult {
    // Drop the object after releasing the registry lock: a pool's drop frees
    // device memory and must not stall every other thread's handle lookups.
    let removed = {
        let mut r = registry();
        match r.live.get(&key) {
            Some(e) if is_kind(e) => r.live.remove(&key),
            _ => None,
        }
    };
    match removed {
        Some(e) => {
            drop(e);
            Ok(())
        }
        None => Err(invalid(what, key)),
    }
}
