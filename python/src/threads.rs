//! The kernels' worker threads: rayon's global pool, with the thread that
//! imports the package (a Python engine's main thread) as one of its workers.
//!
//! Why: a parallel loop started from a thread outside the pool hands the whole
//! job to the pool's workers and blocks until one of them has woken up, run it
//! and woken the caller again: two thread hand-offs per kernel call. At decode
//! sizes (a few hundred microseconds of work) those hand-offs cost as much as
//! the kernel, more on a loaded machine or next to torch's OpenMP threads.
//! With the importing thread in the pool, a call from it starts the work on
//! itself at once and other workers only join in by stealing.
//!
//! Calls from other threads still work: they hand their job to the other
//! workers as before. The importing thread is only made a worker when there are
//! at least two threads (with one, nothing would run jobs handed in by other
//! threads). `RAYON_NUM_THREADS` sets the count, as for any rayon program.

/// Builds the global pool with the calling thread in it; a no-op when the pool
/// exists already or one thread is asked for. Returns the pool's thread count.
pub fn init_with_current_thread() -> usize {
    let wanted = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if wanted >= 2 {
        // An error means the global pool was already built (by an earlier call): keep it.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(wanted).use_current_thread().build_global();
    }
    rayon::current_num_threads()
}
