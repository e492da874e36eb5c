//! Entry points: version, errors, backends and pools.
//!
//! Thread safety, for every function here unless its comment says
//! otherwise: callable from any thread; calls on one pool are serialised by
//! the pool's lock (a second thread waits); calls on different pools run
//! concurrently; a backend handle is shared read-only.

use crate::args;
use crate::handles::{self, dn_backend, dn_pool, BackendObj, PoolObj};
use crate::slot;
use crate::status::{dn_status, guard, last_error_ptr, Failure};
use crate::types::*;
use facade::{Backend, HostState, SpecMode};
use std::ffi::{c_char, c_void, CString};

/// Major version of this library (semver).
pub const DN_VERSION_MAJOR: u32 = 0;
/// Minor version of this library (semver).
pub const DN_VERSION_MINOR: u32 = 1;
/// Patch version of this library (semver).
pub const DN_VERSION_PATCH: u32 = 0;
/// The ABI this header describes. Bumped on any incompatible change of a
/// struct, enum value or signature; compare with `dn_abi_version()` at run
/// time to catch a header/library mismatch.
pub const DN_ABI_VERSION: u32 = 2;

/// The library's ABI version (`DN_ABI_VERSION` of the header it was built with).
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn dn_abi_version() -> u32 {
    DN_ABI_VERSION
}

/// The library's version. Any out-pointer may be NULL. Thread-safe; never fails.
///
/// # Safety
/// Each non-NULL pointer points to a writable `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_version(major: *mut u32, minor: *mut u32, patch: *mut u32) {
    for (p, v) in [(major, DN_VERSION_MAJOR), (minor, DN_VERSION_MINOR), (patch, DN_VERSION_PATCH)] {
        if !p.is_null() {
            // SAFETY: non-NULL and writable (caller's contract).
            unsafe { p.write(v) };
        }
    }
}

/// The message of the last call on this thread that did not return `DN_OK`
/// (empty if none). Valid until the next failing call on this thread; copy it
/// to keep it. Thread-local: never NULL, never another thread's message.
#[no_mangle]
pub extern "C" fn dn_last_error_message() -> *const c_char {
    last_error_ptr()
}

/// Creates a backend by name: "cpu" (K-major pools), "cpu-vk" (V-major
/// pools), "cuda"/"cuda:N", "npu"/"npu:N". A backend not compiled in is
/// `DN_ERR_NOT_COMPILED`; one that cannot run here (no driver, no device) is
/// `DN_ERR_UNAVAILABLE`, and `dn_last_error_message()` says why.
///
/// Thread safety: any thread; each call makes a new backend.
///
/// # Safety
/// `name` is a NUL-terminated string; `out` points to a writable handle.
#[no_mangle]
pub unsafe extern "C" fn dn_backend_create(name: *const c_char, out: *mut *mut dn_backend) -> dn_status {
    guard(|| {
        // SAFETY: caller's contract.
        let name = unsafe { args::str(name, "name") }?;
        // SAFETY: caller's contract; checked before the backend is made so nothing leaks.
        unsafe { args::write(out, std::ptr::null_mut(), "out") }?;
        let backend = Backend::from_name(name)?;
        let cname = CString::new(backend.name()).map_err(|_| Failure::new(dn_status::DN_ERR_INTERNAL, "backend name has a NUL"))?;
        let h = handles::new_backend(BackendObj { backend, name: cname });
        // SAFETY: checked writable above.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Destroys a backend handle. Pools made from it stay usable (they keep the
/// backend alive). A NULL, destroyed or foreign handle is an error.
///
/// Thread safety: any thread; pools made from the backend and calls running on it are unaffected.
#[no_mangle]
pub extern "C" fn dn_backend_destroy(backend: *mut dn_backend) -> dn_status {
    guard(|| handles::destroy_backend(backend))
}

/// What the backend supports.
///
/// Thread safety: any thread (a backend is immutable).
///
/// # Safety
/// `out` points to a writable `dn_capabilities`.
#[no_mangle]
pub unsafe extern "C" fn dn_backend_capabilities(backend: *const dn_backend, out: *mut dn_capabilities) -> dn_status {
    guard(|| {
        let b = handles::backend(backend)?;
        let c = b.backend.capabilities();
        let caps = dn_capabilities {
            name: b.name.as_ptr(),
            device: device_to(c.device),
            native_layout: layout_to(c.native_layout),
            conv_layout: conv_layout_to(c.conv_layout),
            state_dtypes: dtype_mask(&c.state_dtypes),
            conv_dtypes: dtype_mask(&c.conv_dtypes),
            input_dtypes: dtype_mask(&c.input_dtypes),
            max_draft_tokens: c.max_draft_tokens.unwrap_or(0),
            max_head_dim: c.limits.max_head_dim.unwrap_or(0),
            chunk_size: c.chunk_size,
        };
        // SAFETY: caller's contract.
        unsafe { args::write(out, caps, "out") }
    })
}

/// Bytes one slot costs in a pool of `config` (all layers and buffers).
///
/// Thread safety: any thread (pure).
///
/// # Safety
/// `config` and `out` point to a readable config and a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_config_bytes_per_slot(config: *const dn_pool_config, out: *mut usize) -> dn_status {
    guard(|| {
        // SAFETY: caller's contract.
        let cfg = config_from(unsafe { args::read(config, "config") }?)?;
        // SAFETY: caller's contract.
        unsafe { args::write(out, cfg.bytes_per_slot(), "out") }
    })
}

/// How many allocatable slots of `config` fit in `budget` bytes (the padding slot counted).
///
/// Thread safety: any thread (pure).
///
/// # Safety
/// `config` and `out` point to a readable config and a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_config_slots_for_budget(config: *const dn_pool_config, budget: usize, out: *mut usize) -> dn_status {
    guard(|| {
        // SAFETY: caller's contract.
        let cfg = config_from(unsafe { args::read(config, "config") }?)?;
        // SAFETY: caller's contract.
        unsafe { args::write(out, cfg.slots_for_budget(budget), "out") }
    })
}

/// Creates a pool in the backend's layout and memory, every buffer zeroed.
///
/// Thread safety: any thread.
///
/// # Safety
/// `config` points to a readable config; `out` to a writable handle.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_create(backend: *const dn_backend, config: *const dn_pool_config, out: *mut *mut dn_pool) -> dn_status {
    guard(|| {
        let b = handles::backend(backend)?;
        // SAFETY: caller's contract.
        let cfg = config_from(unsafe { args::read(config, "config") }?)?;
        // SAFETY: caller's contract.
        unsafe { args::write(out, std::ptr::null_mut(), "out") }?;
        let pool = b.backend.new_pool(cfg)?;
        let h = handles::new_pool(PoolObj { backend: b, pool });
        // SAFETY: checked writable above.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Destroys a pool and frees its buffers (after any call running on it
/// returns). Batches made for it become useless (`DN_ERR_INVALID_HANDLE`
/// for the pool in any later call).
///
/// Thread safety: any thread; a call running on the pool finishes first, later ones get DN_ERR_INVALID_HANDLE.
#[no_mangle]
pub extern "C" fn dn_pool_destroy(pool: *mut dn_pool) -> dn_status {
    guard(|| handles::destroy_pool(pool))
}

/// Layout, dtypes, sizes and free slots of a pool.
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `out` points to a writable `dn_pool_info`.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_info_get(pool: *const dn_pool, out: *mut dn_pool_info) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        let g = handles::lock(&p)?;
        let dp = g.pool.as_dyn();
        let geo = dp.geometry();
        let cfg = geo.config;
        let info = dn_pool_info {
            layout: layout_to(geo.layout),
            conv_layout: conv_layout_to(geo.conv_layout),
            state_dtype: dtype_to(cfg.state_dtype),
            conv_dtype: dtype_to(cfg.conv_dtype),
            device: device_to(dp.device()),
            layers: cfg.layers,
            capacity: dp.capacity(),
            free_count: dp.free_count(),
            draft_tokens: cfg.draft_tokens(),
            spec_mode: match cfg.spec_mode() {
                Some(SpecMode::Replay) => dn_spec_mode::DN_SPEC_REPLAY,
                _ => dn_spec_mode::DN_SPEC_SCRATCH,
            } as u32,
            bytes: dp.bytes(),
            export_state_bytes: cfg.layers * geo.state_bytes(),
            export_conv_bytes: cfg.layers * geo.conv_bytes(),
        };
        // SAFETY: caller's contract.
        unsafe { args::write(out, info, "out") }
    })
}

/// Allocates `n >= 1` slots into `out_slots` (all or none). Their contents are
/// unspecified: zero them, import into them, or extend without initial state.
/// `n = 0` is `DN_ERR_EMPTY_BATCH`, like every operation on no requests.
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `out_slots` points to `n` writable `uint64_t` (may be NULL when `n` is 0, which is refused).
#[no_mangle]
pub unsafe extern "C" fn dn_pool_alloc(pool: *const dn_pool, n: usize, out_slots: *mut u64) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        // SAFETY: caller's contract.
        let out = unsafe { args::slice_mut(out_slots, n, "out_slots") }?;
        let g = handles::lock(&p)?;
        for (o, s) in out.iter_mut().zip(g.pool.as_dyn().alloc(n)?) {
            *o = slot::to_raw(s);
        }
        Ok(())
    })
}

/// Frees `n >= 1` slots (all or none: a double free, a foreign or padding slot
/// frees nothing; `n = 0` is `DN_ERR_EMPTY_BATCH`).
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `slots` points to `n` readable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_free(pool: *const dn_pool, slots: *const u64, n: usize) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        // SAFETY: caller's contract.
        let slots = slot::from_raw_all(unsafe { args::slice(slots, n, "slots") }?)?;
        handles::lock(&p)?.pool.as_dyn().free(&slots)?;
        Ok(())
    })
}

/// Zeroes the conv and recurrent state of `n >= 1` allocated, distinct slots in every layer.
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `slots` points to `n` readable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_zero(pool: *const dn_pool, slots: *const u64, n: usize) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        // SAFETY: caller's contract.
        let slots = slot::from_raw_all(unsafe { args::slice(slots, n, "slots") }?)?;
        handles::lock(&p)?.pool.as_dyn_mut().zero(&slots)?;
        Ok(())
    })
}

/// Copies `src`'s conv and recurrent state into `dst` (both allocated, distinct).
///
/// Thread safety: any thread; serialised with every other call on this pool.
#[no_mangle]
pub extern "C" fn dn_pool_copy(pool: *const dn_pool, src: u64, dst: u64) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        let (src, dst) = (slot::from_raw(src)?, slot::from_raw(dst)?);
        handles::lock(&p)?.pool.as_dyn_mut().copy(src, dst)?;
        Ok(())
    })
}

/// Allocates a slot holding a copy of `src` into `*out`.
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `out` points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_fork(pool: *const dn_pool, src: u64, out: *mut u64) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        let src = slot::from_raw(src)?;
        // SAFETY: caller's contract; checked before the slot is allocated.
        unsafe { args::write(out, slot::DN_SLOT_NONE, "out") }?;
        let s = handles::lock(&p)?.pool.as_dyn_mut().fork(src)?;
        // SAFETY: checked writable above.
        unsafe { out.write(slot::to_raw(s)) };
        Ok(())
    })
}

/// Exports one slot's state in canonical order into caller memory: recurrent
/// `[L, HV, K, V]` (K-major) in the pool's state dtype, conv `[L, conv_dim,
/// W-1]` in its conv dtype, little-endian. The lengths must be exactly
/// `dn_pool_info.export_state_bytes` / `export_conv_bytes`
/// (`DN_ERR_BUFFER_SIZE` otherwise, nothing written).
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `state` / `conv` point to `state_len` / `conv_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_export(
    pool: *const dn_pool,
    slot: u64,
    state: *mut c_void,
    state_len: usize,
    conv: *mut c_void,
    conv_len: usize,
) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        let s = slot::from_raw(slot)?;
        // SAFETY: caller's contract.
        let state = unsafe { args::slice_mut(state.cast::<u8>(), state_len, "state") }?;
        // SAFETY: caller's contract.
        let conv = unsafe { args::slice_mut(conv.cast::<u8>(), conv_len, "conv") }?;
        let host = handles::lock(&p)?.pool.as_dyn().export(s)?;
        for (name, dst, src) in [("state", &*state, &host.temporal), ("conv", &*conv, &host.conv)] {
            if dst.len() != src.len() {
                return Err(Failure::new(
                    dn_status::DN_ERR_BUFFER_SIZE,
                    format!("`{name}` has {} bytes, the export is {}", dst.len(), src.len()),
                ));
            }
        }
        state.copy_from_slice(&host.temporal);
        conv.copy_from_slice(&host.conv);
        Ok(())
    })
}

/// Overwrites one slot's state from caller memory in canonical order (as
/// `dn_pool_export` writes it), stored in `state_dtype` / `conv_dtype`
/// (`dn_dtype` values; converted when they differ from the pool's). Exact
/// between pools of either layout with the same dtypes. Wrong lengths or dims
/// are `DN_ERR_STATE_MISMATCH`, with the slot unchanged.
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `state` / `conv` point to `state_len` / `conv_len` readable bytes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_pool_import(
    pool: *const dn_pool,
    slot: u64,
    state: *const c_void,
    state_len: usize,
    state_dtype: u32,
    conv: *const c_void,
    conv_len: usize,
    conv_dtype: u32,
) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        let s = slot::from_raw(slot)?;
        let (sd, cd) = (dtype_from(state_dtype, "state_dtype")?, dtype_from(conv_dtype, "conv_dtype")?);
        // SAFETY: caller's contract.
        let state = unsafe { args::slice(state.cast::<u8>(), state_len, "state") }?;
        // SAFETY: caller's contract.
        let conv = unsafe { args::slice(conv.cast::<u8>(), conv_len, "conv") }?;
        let mut g = handles::lock(&p)?;
        let cfg = g.pool.as_dyn().geometry().config;
        let host = HostState {
            layers: cfg.layers,
            dims: cfg.dims,
            state_dtype: sd,
            conv_dtype: cd,
            temporal: state.to_vec(),
            conv: conv.to_vec(),
        };
        g.pool.as_dyn_mut().import(s, &host)?;
        Ok(())
    })
}

/// Per-layer descriptors of every pool buffer, for transfer engines. Always
/// sets `*count` to the number of descriptors; writes them when `out` is not
/// NULL and `capacity >= *count` (`DN_ERR_BUFFER_SIZE` when it is smaller).
/// The addresses are valid until the pool is destroyed.
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `out` is NULL or points to `capacity` writable descriptors; `count` to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_descriptors(
    pool: *const dn_pool,
    out: *mut dn_buffer_descriptor,
    capacity: usize,
    count: *mut usize,
) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        let ds = handles::lock(&p)?.pool.as_dyn().descriptors();
        // SAFETY: caller's contract.
        unsafe { args::write(count, ds.len(), "count") }?;
        if out.is_null() {
            return Ok(());
        }
        if capacity < ds.len() {
            return Err(Failure::new(dn_status::DN_ERR_BUFFER_SIZE, format!("room for {capacity} descriptors, the pool has {}", ds.len())));
        }
        // SAFETY: caller's contract.
        let out = unsafe { args::slice_mut(out, ds.len(), "out") }?;
        for (o, d) in out.iter_mut().zip(ds) {
            *o = dn_buffer_descriptor {
                kind: buffer_kind_to(d.kind),
                layer: d.layer,
                device: device_to(d.device),
                addr: d.addr,
                bytes: d.bytes,
                bytes_per_slot: d.bytes_per_slot,
            };
        }
        Ok(())
    })
}

/// A hash of every byte of every pool buffer (tests: "nothing changed").
///
/// Thread safety: any thread; serialised with every other call on this pool.
///
/// # Safety
/// `out` points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn dn_pool_digest(pool: *const dn_pool, out: *mut u64) -> dn_status {
    guard(|| {
        let p = handles::pool(pool)?;
        let d = handles::lock(&p)?.pool.as_dyn().digest()?;
        // SAFETY: caller's contract.
        unsafe { args::write(out, d, "out") }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_macros_follow_the_crate_version() {
        let v = |s: &str| s.parse::<u32>().unwrap();
        assert_eq!(
            (DN_VERSION_MAJOR, DN_VERSION_MINOR, DN_VERSION_PATCH),
            (v(env!("CARGO_PKG_VERSION_MAJOR")), v(env!("CARGO_PKG_VERSION_MINOR")), v(env!("CARGO_PKG_VERSION_PATCH")))
        );
    }
}
