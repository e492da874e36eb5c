//! Plain C arguments (pointer + count, C strings, enum values) into Rust
//! values, each failure a `DN_ERR_NULL_POINTER` / `DN_ERR_INVALID_ARGUMENT`.

use crate::status::{dn_status, CResult, Failure};
use std::ffi::{c_char, CStr};

fn null(name: &str) -> Failure {
    Failure::new(dn_status::DN_ERR_NULL_POINTER, format!("`{name}` is NULL"))
}

fn check_ptr<T>(p: *const T, n: usize, name: &str) -> CResult {
    if p.is_null() {
        return Err(null(name));
    }
    if !p.is_aligned() {
        return Err(Failure::new(dn_status::DN_ERR_INVALID_ARGUMENT, format!("`{name}` is not aligned for its element type")));
    }
    if n.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(Failure::new(dn_status::DN_ERR_INVALID_ARGUMENT, format!("`{name}`: {n} elements overflow")));
    }
    Ok(())
}

/// `n` elements at `p` (NULL allowed when `n == 0`).
///
/// # Safety
/// Unless NULL, `p` points to `n` readable `T` valid for `'a`.
pub unsafe fn slice<'a, T>(p: *const T, n: usize, name: &str) -> CResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    check_ptr(p, n, name)?;
    // SAFETY: non-NULL, aligned, `n` elements readable (caller's contract), size within isize.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// `n` writable elements at `p` (NULL allowed when `n == 0`).
///
/// # Safety
/// Unless NULL, `p` points to `n` writable `T` valid for `'a`, not aliased.
pub unsafe fn slice_mut<'a, T>(p: *mut T, n: usize, name: &str) -> CResult<&'a mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    check_ptr(p, n, name)?;
    // SAFETY: as in `slice`, writable and unaliased (caller's contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// The value behind a required pointer.
///
/// # Safety
/// Unless NULL, `p` points to a readable `T`.
pub unsafe fn read<'a, T>(p: *const T, name: &str) -> CResult<&'a T> {
    check_ptr(p, 1, name)?;
    // SAFETY: non-NULL and aligned; readable by the caller's contract.
    Ok(unsafe { &*p })
}

/// Writes `v` to a required out-pointer.
///
/// # Safety
/// Unless NULL, `p` points to a writable `T`.
pub unsafe fn write<T>(p: *mut T, v: T, name: &str) -> CResult {
    check_ptr(p, 1, name)?;
    // SAFETY: non-NULL and aligned; writable by the caller's contract. `write`
    // does not drop the old (possibly uninitialised) value.
    unsafe { p.write(v) };
    Ok(())
}

/// A NUL-terminated UTF-8 string.
///
/// # Safety
/// Unless NULL, `p` points to a NUL-terminated string valid for `'a`.
pub unsafe fn str<'a>(p: *const c_char, name: &str) -> CResult<&'a str> {
    if p.is_null() {
        return Err(null(name));
    }
    // SAFETY: non-NULL and NUL-terminated (caller's contract).
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| Failure::new(dn_status::DN_ERR_INVALID_ARGUMENT, format!("`{name}` is not UTF-8")))
}

/// A plain argument out of its domain.
pub fn invalid(message: impl Into<String>) -> Failure {
    Failure::new(dn_status::DN_ERR_INVALID_ARGUMENT, message)
}

/// A C boolean that must be 0 or 1.
pub fn flag(v: u8, name: &str) -> CResult<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(invalid(format!("`{name}` is {other}, expected 0 or 1"))),
    }
}

/// The value behind an optional pointer (NULL: `None`).
///
/// # Safety
/// Unless NULL, `p` points to a readable `T`.
pub unsafe fn read_opt<'a, T>(p: *const T, name: &str) -> CResult<Option<&'a T>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    unsafe { read(p, name) }.map(Some)
}
