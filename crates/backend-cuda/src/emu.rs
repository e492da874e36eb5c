//! The CPU emulation of the CUDA execution model (kernels/cuda/emu), compiled
//! by build.rs with the host C++ compiler: the same kernel sources, run with
//! one OS thread per CUDA thread, on host memory.

use crate::args::KernelArgs;
use crate::kernels::Kernel;
use crate::launcher::{sealed, Launcher};
use deltanet_core::{DeviceMemory, Error, HostBuffer, HostMemory, Result};
use std::ffi::{c_char, c_void, CString};

extern "C" {
    fn deltanet_emu_launch(name: *const c_char, gx: u32, gy: u32, gz: u32, bx: u32, args: *const c_void, args_size: usize) -> i32;
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

impl sealed::Sealed for EmuLauncher {}

impl Launcher for EmuLauncher {
    type Memory = HostMemory;
    type Staging = Vec<u8>;

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
    fn launch<A: KernelArgs>(&self, grid: (u32, u32, u32), block: u32, args: &A) -> Result<()> {
        launch(grid, block, args)
    }
    fn alloc_device(&self, bytes: usize) -> Result<HostBuffer> {
        HostMemory.alloc_zeroed(bytes)
    }
    fn alloc_staging(&self, bytes: usize) -> Result<Vec<u8>> {
        Ok(vec![0; bytes])
    }
    fn staging_mut<'s>(&self, staging: &'s mut Vec<u8>) -> Result<&'s mut [u8]> {
        Ok(staging)
    }
    fn upload(&self, staging: &Vec<u8>, dst: &mut HostBuffer) -> Result<()> {
        HostMemory.write(dst, 0, staging)
    }
}

/// Runs one kernel in the emulation (synchronously: the emulation has no queue).
pub(crate) fn launch<A: KernelArgs>(grid: (u32, u32, u32), block: u32, args: &A) -> Result<()> {
    // SAFETY: `A` is a #[repr(C)] struct of integers and floats without padding
    // (checked in args.rs), so its `size_of::<A>()` bytes are initialised.
    let bytes = unsafe { std::slice::from_raw_parts((args as *const A).cast::<u8>(), std::mem::size_of::<A>()) };
    launch_bytes(A::KERNEL.name(), grid, block, bytes)
}

/// Runs kernel `name` with the bytes of its argument struct.
pub(crate) fn launch_bytes(name: &'static str, grid: (u32, u32, u32), block: u32, args: &[u8]) -> Result<()> {
    let c_name = CString::new(name).expect("no NUL");
    // SAFETY: `c_name` is NUL-terminated; `args` holds the bytes of the
    // kernel's argument struct (the emulation checks the size against its own
    // struct's); the addresses in it were made by the dispatcher from live
    // host buffers and views that outlive this call (the emulated launch runs
    // to completion before returning; a replayed capture runs while the
    // buffers it was captured with are alive, as a CUDA graph must).
    let r = unsafe { deltanet_emu_launch(c_name.as_ptr(), grid.0, grid.1, grid.2, block, args.as_ptr().cast(), args.len()) };
    if r != 0 {
        return Err(Error::Device { backend: "cuda-emulated".into(), op: name.into(), message: format!("emulated launch failed ({r})") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! args.h as the host C++ compiler lays it out (the emulation's table,
    //! kernels/cuda/emu/layout.cpp) against the Rust mirrors.
    use crate::args::LAYOUTS;
    use std::ffi::{c_char, CStr};

    #[repr(C)]
    struct FieldLayout {
        type_name: *const c_char,
        field: *const c_char,
        offset: usize,
        type_size: usize,
    }

    extern "C" {
        fn deltanet_emu_args_layout(fields: *mut *const FieldLayout) -> usize;
    }

    /// A struct's name, size and (field, offset) list.
    type Layout = (String, usize, Vec<(String, usize)>);

    /// Each struct's layout, in the table's order.
    fn cpp_layouts() -> Vec<Layout> {
        let mut p = std::ptr::null();
        // SAFETY: writes the address of a static table and returns its length.
        let n = unsafe { deltanet_emu_args_layout(&mut p) };
        // SAFETY: `p` points to `n` entries of a static array.
        let table = unsafe { std::slice::from_raw_parts(p, n) };
        let mut out: Vec<Layout> = Vec::new();
        for e in table {
            // SAFETY: both are string literals of the table.
            let (t, f) = unsafe { (CStr::from_ptr(e.type_name), CStr::from_ptr(e.field)) };
            let (t, f) = (t.to_str().unwrap().to_string(), f.to_str().unwrap().to_string());
            if out.last().is_none_or(|l| l.0 != t) {
                out.push((t.clone(), e.type_size, Vec::new()));
            }
            let last = out.last_mut().unwrap();
            assert_eq!(last.1, e.type_size, "{t}: two sizes");
            last.2.push((f, e.offset));
        }
        out
    }

    #[test]
    fn the_cpp_compiler_lays_out_every_argument_struct_as_rust_does() {
        let cpp = cpp_layouts();
        let rust: Vec<Layout> =
            LAYOUTS.iter().map(|l| (l.name.to_string(), l.size, l.fields.iter().map(|&(f, o)| (f.to_string(), o)).collect())).collect();
        assert_eq!(cpp.iter().map(|c| &c.0).collect::<Vec<_>>(), rust.iter().map(|r| &r.0).collect::<Vec<_>>(), "structs");
        for (c, r) in cpp.iter().zip(&rust) {
            assert_eq!(c, r, "{}: C++ (left) and Rust (right) differ", c.0);
        }
    }
}
