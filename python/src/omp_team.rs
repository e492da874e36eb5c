//! torch's OpenMP threads lent to the kernels (`deltanet::cpu::HostTeam`).
//!
//! torch runs its CPU operations on an OpenMP team whose workers spin for a
//! while after each operation, waiting for the next, so a rayon worker next to
//! them shares a core with a spinning thread. The fla-compatible functions'
//! calls (prefill, decode and conv, see `functional.rs`) instead start an
//! OpenMP parallel region through the same runtime, `GOMP_parallel` (the entry point GCC compiles `#pragma omp
//! parallel` to, which libgomp and LLVM's libomp both export): the spinning
//! workers take their share at once, on their own cores, and the calling
//! thread takes its own. Nothing is looked up or loaded unless the process has
//! already loaded an OpenMP runtime into its global symbol scope (importing
//! torch does); without one, or with `DELTANET_OMP_TEAM=0`, the calls run on
//! the calling thread and rayon's pool. The results are the same bits either way.

use deltanet::cpu::HostTeam;
use std::any::Any;
use std::ffi::{c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`.
type GompParallel = unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
/// `int omp_get_thread_num(void)` / `int omp_get_num_threads(void)`.
type OmpInt = unsafe extern "C" fn() -> c_int;

/// The OpenMP runtime's entry points, as found in the process.
#[derive(Clone, Copy)]
pub struct OmpTeam {
    parallel: GompParallel,
    thread_num: OmpInt,
    num_threads: OmpInt,
}

#[cfg(unix)]
extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const std::ffi::c_char) -> *mut c_void;
}

/// `RTLD_DEFAULT` (glibc, musl and macOS: the global scope).
#[cfg(target_os = "macos")]
const RTLD_DEFAULT: *mut c_void = -2isize as *mut c_void;
#[cfg(all(unix, not(target_os = "macos")))]
const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

#[cfg(unix)]
fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with the global scope and a NUL-terminated name only looks a symbol up.
    let p = unsafe { dlsym(RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// No global symbol scope to search (Windows): the calls stay on the calling thread.
#[cfg(not(unix))]
fn symbol(_name: &CStr) -> Option<*mut c_void> {
    None
}

impl OmpTeam {
    /// The team of the OpenMP runtime loaded in this process, if one is (and
    /// `DELTANET_OMP_TEAM` is not `0`).
    pub fn find() -> Option<OmpTeam> {
        if std::env::var("DELTANET_OMP_TEAM").is_ok_and(|v| v.trim() == "0") {
            return None;
        }
        let (parallel, thread_num, num_threads) =
            (symbol(c"GOMP_parallel")?, symbol(c"omp_get_thread_num")?, symbol(c"omp_get_num_threads")?);
        // SAFETY: these exported symbols have the C signatures above in every OpenMP
        // runtime that exports them (libgomp's ABI, which LLVM's libomp implements too).
        unsafe {
            Some(OmpTeam {
                parallel: std::mem::transmute::<*mut c_void, GompParallel>(parallel),
                thread_num: std::mem::transmute::<*mut c_void, OmpInt>(thread_num),
                num_threads: std::mem::transmute::<*mut c_void, OmpInt>(num_threads),
            })
        }
    }

    /// [`OmpTeam::find`], remembered once found; while none is, looked for
    /// again on one call in 64 (a failed search of every loaded library's
    /// symbols costs microseconds), so a runtime loaded after the first call
    /// (torch imported later) is still found.
    pub fn loaded() -> Option<OmpTeam> {
        static FOUND: OnceLock<OmpTeam> = OnceLock::new();
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        if let Some(t) = FOUND.get() {
            return Some(*t);
        }
        if !CALLS.fetch_add(1, Ordering::Relaxed).is_multiple_of(64) {
            return None;
        }
        OmpTeam::find().map(|t| *FOUND.get_or_init(|| t))
    }

    /// The team as the dispatcher takes it.
    pub fn shared(self) -> Arc<dyn HostTeam> {
        Arc::new(self)
    }
}

/// One parallel region's work: what each thread runs, and the first panic.
struct Region<'a> {
    body: &'a (dyn Fn(usize, usize) + Sync),
    team: OmpTeam,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// What every thread of the region runs: its share of the body, a panic caught
/// here (it must not unwind into the OpenMP runtime) and kept for the caller.
unsafe extern "C" fn region_thread(data: *mut c_void) {
    // SAFETY: `data` is the `Region` that `run` keeps alive until GOMP_parallel returns.
    let region = unsafe { &*(data as *const Region<'_>) };
    // SAFETY: called inside the parallel region, where these are defined.
    let (i, n) = unsafe { ((region.team.thread_num)(), (region.team.num_threads)()) };
    let (i, n) = (i.max(0) as usize, n.max(1) as usize);
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| (region.body)(i, n))) {
        region.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
    }
}

impl HostTeam for OmpTeam {
    fn run(&self, body: &(dyn Fn(usize, usize) + Sync)) {
        let region = Region { body, team: *self, panic: Mutex::new(None) };
        // SAFETY: `region_thread` has the callback signature GOMP_parallel takes and catches
        // every panic; `region` outlives the call, which returns when every thread is done.
        // 0 threads: the runtime's default team size for this thread (torch sets it).
        unsafe { (self.parallel)(region_thread, &region as *const Region<'_> as *mut c_void, 0, 0) };
        if let Some(p) = region.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
            resume_unwind(p)
        }
    }
}
