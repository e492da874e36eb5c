//! How the dispatcher runs a kernel: on a GPU through cudarc, or on the CPU
//! through the emulation. The dispatcher's host logic is written once over
//! this trait.

use crate::args::KernelArgs;
use crate::kernels::Kernel;
use deltanet_core::{DeviceMemory, Result};

/// Launches the kernels of kernels/cuda on some device: [`GpuLauncher`](crate::GpuLauncher)
/// or, with the `emulate` feature, `EmuLauncher`. Sealed: the kernels and
/// their arguments are the crate's own, so only it implements this.
pub trait Launcher: sealed::Sealed + Send + Sync + 'static {
    /// The memory kernels read and write.
    type Memory: DeviceMemory;
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
    /// Runs the kernel `A` is for over `grid` blocks of `block` threads, with
    /// `args` by value, and waits for it.
    fn launch<A: KernelArgs>(&self, grid: (u32, u32, u32), block: u32, args: &A) -> Result<()>;
}

pub(crate) mod sealed {
    /// Implemented by the crate's launchers only.
    pub trait Sealed {}
}
