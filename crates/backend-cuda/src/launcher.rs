//! How the dispatcher runs a kernel: on a GPU through cudarc, or on the CPU
//! through the emulation. The dispatcher's host logic is written once over
//! this trait.

use crate::kernels::{Args, Kernel};
use deltanet_core::{DeviceMemory, Result};

/// Launches the kernels of kernels/cuda on some device.
pub trait Launcher: Send + Sync + 'static {
    /// The memory kernels read and write.
    type Memory: DeviceMemory;
    /// The memory.
    fn memory(&self) -> &Self::Memory;
    /// Backend name for capabilities and errors.
    fn backend(&self) -> &'static str;
    /// Threads per block for `kernel` (a multiple of 32).
    fn block_threads(&self, kernel: Kernel) -> u32;
    /// Runs `kernel` over `grid` blocks of `block` threads and waits for it.
    fn launch(&self, kernel: Kernel, grid: (u32, u32, u32), block: u32, args: &Args) -> Result<()>;
}
