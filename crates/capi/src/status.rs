//! Status codes, the calling thread's last error message, and the guard every
//! entry point runs its body in (so no panic crosses the boundary).

use facade::Error;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What every `dn_` function returns. `DN_OK` is 0; codes 1-99 mirror the
/// Rust `deltanet::Error` kinds one to one; codes from 100 are C-side
/// failures (null pointers, bad handles, bad plain arguments, internal
/// errors). After any code but `DN_OK`, `dn_last_error_message()` on the same
/// thread says what went wrong, and no pool state was changed.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dn_status {
    /// Success.
    DN_OK = 0,
    /// A pool of one recurrent layout was handed to a backend of the other.
    DN_ERR_LAYOUT_MISMATCH = 1,
    /// The backend does not support that dtype for that buffer or tensor.
    DN_ERR_UNSUPPORTED_DTYPE = 2,
    /// Dims or a configuration the backend cannot run.
    DN_ERR_UNSUPPORTED = 3,
    /// A configuration invalid on every backend (zero heads, HV not a multiple of HK, ...).
    DN_ERR_INVALID_CONFIG = 4,
    /// A tensor of the wrong shape.
    DN_ERR_SHAPE_MISMATCH = 5,
    /// A tensor of the wrong dtype (or a DLPack dtype deltanet has no type for).
    DN_ERR_DTYPE_MISMATCH = 6,
    /// Strides the kernel cannot honour, overlapping or aliasing outputs, a misaligned address.
    DN_ERR_BAD_STRIDES = 7,
    /// A tensor on another device than the backend's.
    DN_ERR_DEVICE_MISMATCH = 8,
    /// The padding slot (index 0) named where a real slot is needed.
    DN_ERR_PADDING_SLOT = 9,
    /// A slot beyond the pool.
    DN_ERR_SLOT_OUT_OF_RANGE = 10,
    /// A slot that is not allocated (never, or freed).
    DN_ERR_SLOT_NOT_ALLOCATED = 11,
    /// `dn_pool_free` of a slot already free.
    DN_ERR_DOUBLE_FREE = 12,
    /// The same slot twice where slots must be distinct.
    DN_ERR_DUPLICATE_SLOT = 13,
    /// Not enough free slots.
    DN_ERR_POOL_EXHAUSTED = 14,
    /// `cu_seqlens` malformed.
    DN_ERR_BAD_CU_SEQLENS = 15,
    /// A per-sequence array of the wrong length.
    DN_ERR_LENGTH_MISMATCH = 16,
    /// Draft count other than the pool's.
    DN_ERR_DRAFT_MISMATCH = 17,
    /// Verify or commit on a pool made without speculative buffers.
    DN_ERR_NO_SPECULATIVE_BUFFERS = 18,
    /// An accepted step `>= D`.
    DN_ERR_ACCEPTED_OUT_OF_RANGE = 19,
    /// A tree parent that is not -1 or an earlier token.
    DN_ERR_BAD_PARENT = 20,
    /// A snapshot position outside the sequence.
    DN_ERR_BAD_SNAPSHOT = 21,
    /// A layer index beyond the pool.
    DN_ERR_LAYER_OUT_OF_RANGE = 22,
    /// A batch made for another pool.
    DN_ERR_FOREIGN_BATCH = 23,
    /// Imported state whose dims or byte lengths do not match the pool.
    DN_ERR_STATE_MISMATCH = 24,
    /// The backend is compiled in but cannot run here (the message says why).
    DN_ERR_UNAVAILABLE = 25,
    /// The backend was not compiled into this library.
    DN_ERR_NOT_COMPILED = 26,
    /// An allocation failed.
    DN_ERR_OUT_OF_MEMORY = 27,
    /// The device runtime reported a failure.
    DN_ERR_DEVICE = 28,
    /// A slot handle from before its slot was freed (and perhaps handed out again).
    DN_ERR_STALE_SLOT = 29,
    /// Commit on a slot and layer whose scratch holds no current verify.
    DN_ERR_NO_CURRENT_VERIFY = 30,
    /// A non-finite input or starting state, refused by a pool made with the finite check.
    DN_ERR_NON_FINITE = 31,
    /// An operation on no requests (a batch of none, `dn_pool_alloc` of 0, a
    /// free or zero of no slots): refused, nothing changed.
    DN_ERR_EMPTY_BATCH = 32,
    /// A commit names a snapshot slot for a request it skips.
    DN_ERR_SNAPSHOT_OF_SKIPPED = 33,
    /// A required pointer argument was NULL.
    DN_ERR_NULL_POINTER = 100,
    /// A handle that is not live: never made, already destroyed, or of another kind.
    DN_ERR_INVALID_HANDLE = 101,
    /// A plain argument out of its domain (unknown enum value, negative count, non-UTF-8 name, ...).
    DN_ERR_INVALID_ARGUMENT = 102,
    /// A caller buffer of the wrong size (the message gives the size needed).
    DN_ERR_BUFFER_SIZE = 103,
    /// A bug in deltanet (a caught panic). The handle involved may be unusable afterwards.
    DN_ERR_INTERNAL = 199,
}

/// The code of a Rust error: its [`Error::code`] (core numbers every kind,
/// exhaustively; `tests::every_error_code_has_its_status` fails until a new
/// kind has its `dn_status` here and in the header).
pub fn code_of(e: &Error) -> dn_status {
    status_of_code(e.code())
}

fn status_of_code(code: u16) -> dn_status {
    use dn_status::*;
    match code {
        1 => DN_ERR_LAYOUT_MISMATCH,
        2 => DN_ERR_UNSUPPORTED_DTYPE,
        3 => DN_ERR_UNSUPPORTED,
        4 => DN_ERR_INVALID_CONFIG,
        5 => DN_ERR_SHAPE_MISMATCH,
        6 => DN_ERR_DTYPE_MISMATCH,
        7 => DN_ERR_BAD_STRIDES,
        8 => DN_ERR_DEVICE_MISMATCH,
        9 => DN_ERR_PADDING_SLOT,
        10 => DN_ERR_SLOT_OUT_OF_RANGE,
        11 => DN_ERR_SLOT_NOT_ALLOCATED,
        12 => DN_ERR_DOUBLE_FREE,
        13 => DN_ERR_DUPLICATE_SLOT,
        14 => DN_ERR_POOL_EXHAUSTED,
        15 => DN_ERR_BAD_CU_SEQLENS,
        16 => DN_ERR_LENGTH_MISMATCH,
        17 => DN_ERR_DRAFT_MISMATCH,
        18 => DN_ERR_NO_SPECULATIVE_BUFFERS,
        19 => DN_ERR_ACCEPTED_OUT_OF_RANGE,
        20 => DN_ERR_BAD_PARENT,
        21 => DN_ERR_BAD_SNAPSHOT,
        22 => DN_ERR_LAYER_OUT_OF_RANGE,
        23 => DN_ERR_FOREIGN_BATCH,
        24 => DN_ERR_STATE_MISMATCH,
        25 => DN_ERR_UNAVAILABLE,
        26 => DN_ERR_NOT_COMPILED,
        27 => DN_ERR_OUT_OF_MEMORY,
        28 => DN_ERR_DEVICE,
        29 => DN_ERR_STALE_SLOT,
        30 => DN_ERR_NO_CURRENT_VERIFY,
        31 => DN_ERR_NON_FINITE,
        32 => DN_ERR_EMPTY_BATCH,
        33 => DN_ERR_SNAPSHOT_OF_SKIPPED,
        _ => DN_ERR_INTERNAL,
    }
}

/// A failure of a C entry point: a code and its message.
#[derive(Debug)]
pub struct Failure {
    /// The code returned.
    pub code: dn_status,
    /// What `dn_last_error_message` will say.
    pub message: String,
}

impl Failure {
    /// A C-side failure (codes from 100).
    pub fn new(code: dn_status, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure { code: code_of(&e), message: e.to_string() }
    }
}

/// What entry-point bodies return.
pub type CResult<T = ()> = std::result::Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NULs would cut the C string short; they cannot come from our
    // messages but may come from a caller's backend name echoed back.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|m| *m.borrow_mut() = c);
}

/// Runs an entry point's body: `DN_OK` on success; otherwise the failure's
/// code, with its message recorded for this thread. A panic is caught and
/// becomes `DN_ERR_INTERNAL`.
pub fn guard(body: impl FnOnce() -> CResult) -> dn_status {
    // AssertUnwindSafe: after a panic nothing the body touched is used again
    // through this call; a pool whose lock was held is poisoned and every
    // later call on it reports DN_ERR_INTERNAL (handles.rs).
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => dn_status::DN_OK,
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (a bug in deltanet, please report it): {what}"));
            dn_status::DN_ERR_INTERNAL
        }
    }
}

/// The message of the last failed call on this thread, as a pointer valid
/// until this thread's next failing call.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|m| m.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn message() -> String {
        // SAFETY: `last_error_ptr` is a NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(last_error_ptr()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let code = guard(|| panic!("kernel bug {}", 42));
        assert_eq!(code, dn_status::DN_ERR_INTERNAL);
        assert!(message().contains("kernel bug 42"), "{}", message());
    }

    #[test]
    fn errors_keep_their_kind_and_message_per_thread() {
        let code = guard(|| Err(Error::DoubleFree { slot: 3 }.into()));
        assert_eq!(code, dn_status::DN_ERR_DOUBLE_FREE);
        assert_eq!(message(), "double free of slot 3");
        let other = std::thread::spawn(message).join().unwrap();
        assert_eq!(other, "", "another thread sees its own (empty) message");
        assert_eq!(guard(|| Ok(())), dn_status::DN_OK);
        assert_eq!(message(), "double free of slot 3", "success leaves the last error in place");
    }

    #[test]
    fn every_error_code_has_its_status() {
        for code in 1..=Error::MAX_CODE {
            assert_eq!(status_of_code(code) as u16, code, "Error code {code} has no dn_status of the same value");
        }
        assert_eq!(status_of_code(Error::MAX_CODE + 1), dn_status::DN_ERR_INTERNAL);
    }
}
