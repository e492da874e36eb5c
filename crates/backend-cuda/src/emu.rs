//! The CPU emulation of the CUDA execution model (kernels/cuda/emu), compiled
//! by build.rs with the host C++ compiler: the same kernel sources, run with
//! one OS thread per CUDA thread, on host memory.

use crate::kernels::{Args, Kernel};
use crate::launcher::Launcher;
use deltanet_core::{Error, HostMemory, Result};
use std::ffi::{c_char, CString};

extern "C" {
    fn deltanet_emu_launch(name: *const c_char, gx: u32, gy: u32, gz: u32, bx: u32, args: *const Args) -> i32;
}

/// Launches the kernels in the emulation, on host memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmuLauncher {
    /// Threads per block for every kernel (0: the default, 64).
    threads: u32,
}

impl EmuLauncher {
    /// Blocks of `threads` threads (a multiple of 32, at most 1024) for every kernel:
    /// results must not depend on it.
    pub fn with_block_threads(threads: u32) -> Self {
        EmuLauncher { threads }
    }
}

impl Launcher for EmuLauncher {
    type Memory = HostMemory;

    fn memory(&self) -> &HostMemory {
        &HostMemory
    }
    fn backend(&self) -> &'static str {
        "cuda-emulated"
    }
    fn block_threads(&self, kernel: Kernel) -> u32 {
        // Fewer threads than on a GPU (each is an OS thread); every kernel
        // computes each output with one thread in a fixed order, so results do
        // not depend on the block size.
        let _ = kernel;
        if self.threads == 0 {
            64
        } else {
            self.threads
        }
    }
    fn launch(&self, kernel: Kernel, grid: (u32, u32, u32), block: u32, args: &Args) -> Result<()> {
        let name = CString::new(kernel.name()).expect("no NUL");
        // SAFETY: `name` is NUL-terminated; `args` is a valid `Args` whose
        // addresses the dispatcher made from live host buffers and views that
        // outlive this call (the launch is synchronous).
        let r = unsafe { deltanet_emu_launch(name.as_ptr(), grid.0, grid.1, grid.2, block, args) };
        if r != 0 {
            return Err(Error::Device {
                backend: "cuda-emulated".into(),
                op: kernel.name().into(),
                message: format!("emulated launch failed ({r})"),
            });
        }
        Ok(())
    }
}
