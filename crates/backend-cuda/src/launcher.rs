//! How the dispatcher runs a kernel: on a GPU through cudarc, or on the CPU
//! through the emulation. The dispatcher's host logic is written once over
//! this trait.

use crate::args::KernelArgs;
use crate::kernels::Kernel;
use deltanet_core::{DeviceMemory, Result};

/// Launches the kernels of kernels/cuda on some device: [`GpuLauncher`](crate::GpuLauncher)
/// or, with the `emulate` feature, `EmuLauncher` and `CountingLauncher`.
/// Sealed: the kernels and their arguments are the crate's own, so only it
/// implements this.
///
/// Nothing here waits for the device: launches and uploads are queued on the
/// launcher's stream, in order, and a device error of a queued launch surfaces
/// at the next call that waits for the stream (a pool export, a tensor read,
/// or the engine's own synchronisation).
pub trait Launcher: sealed::Sealed + Send + Sync + 'static {
    /// The memory kernels read and write.
    type Memory: DeviceMemory;
    /// Host memory a step plan's tables are written into before their one
    /// upload (page-locked on a GPU, so the copy is asynchronous).
    type Staging: Send + Sync + 'static;
    /// The memory.
    fn memory(&self) -> &Self::Memory;
    /// Backend name for capabilities and errors.
    fn backend(&self) -> &'static str;
    /// Whether `mma.sync` with bf16 and tf32 operands runs (sm_80 and later;
    /// the emulation implements it), so `dnk_extend_tc` may be launched.
    /// No by default: a launcher that does not say runs the portable kernels.
    fn tensor_cores(&self) -> bool {
        false
    }
    /// Threads per block for `kernel` (a multiple of 32).
    fn block_threads(&self, kernel: Kernel) -> u32;
    /// Queues the kernel `A` is for over `grid` blocks of `block` threads, with
    /// `args` by value (copied at the call: `args` may be dropped on return).
    fn launch<A: KernelArgs>(&self, grid: (u32, u32, u32), block: u32, args: &A) -> Result<()>;
    /// Allocates `bytes` of device memory for a plan (not zeroed).
    fn alloc_device(&self, bytes: usize) -> Result<<Self::Memory as DeviceMemory>::Buffer>;
    /// Allocates `bytes` of staging memory.
    fn alloc_staging(&self, bytes: usize) -> Result<Self::Staging>;
    /// The staging bytes, to write a plan's tables into. On a GPU this waits
    /// for the previous upload from them, if it is still queued (it has long
    /// finished by the next step on any engine's schedule).
    fn staging_mut<'s>(&self, staging: &'s mut Self::Staging) -> Result<&'s mut [u8]>;
    /// Queues one copy of the whole of `staging` into the start of `dst`
    /// (which is at least as long).
    fn upload(&self, staging: &Self::Staging, dst: &mut <Self::Memory as DeviceMemory>::Buffer) -> Result<()>;
}

pub(crate) mod sealed {
    /// Implemented by the crate's launchers only.
    pub trait Sealed {}
}
