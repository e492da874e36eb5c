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
    fn tensor_cores(&self) -> bool {
        true
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

#[cfg(test)]
mod mma_tests {
    //! The emulated `mma.sync` (kernels/cuda/emu/mma.h) against a plain matrix
    //! product on random data, through a one-block probe kernel whose lanes
    //! hold the fragments the PTX ISA assigns them (kernels/cuda/emu/mma_probe.cu).
    use half::bf16;
    use rand::{Rng, SeedableRng};
    use std::ffi::{c_char, c_void};

    extern "C" {
        fn deltanet_emu_launch(name: *const c_char, gx: u32, gy: u32, gz: u32, bx: u32, args: *const c_void, args_size: usize) -> i32;
    }

    /// `MmaProbeArgs` of mma_probe.cu.
    #[repr(C)]
    struct MmaProbeArgs {
        a: *const f32,
        b: *const f32,
        c: *const f32,
        d: *mut f32,
        op: i64,
    }

    const WARPS: usize = 3;

    /// D = A B + C for each of WARPS problems of shape 16 x kd x 8 (row-major), run by one warp each.
    fn probe(op: i64, kd: usize, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
        assert_eq!((a.len(), b.len(), c.len()), (WARPS * 16 * kd, WARPS * kd * 8, WARPS * 128));
        let mut d = vec![f32::NAN; WARPS * 128];
        let args = MmaProbeArgs { a: a.as_ptr(), b: b.as_ptr(), c: c.as_ptr(), d: d.as_mut_ptr(), op };
        // SAFETY: the name is NUL-terminated; the args struct is the probe's, its pointers
        // address live buffers of the sizes asserted above, and the launch is synchronous.
        let r = unsafe {
            deltanet_emu_launch(
                c"dnk_emu_mma_probe".as_ptr(),
                1,
                1,
                1,
                (32 * WARPS) as u32,
                (&args as *const MmaProbeArgs).cast(),
                std::mem::size_of::<MmaProbeArgs>(),
            )
        };
        assert_eq!(r, 0, "probe launch");
        d
    }

    /// Checks every element of `d` against the f64 product of the same operands.
    fn check(kd: usize, a: &[f32], b: &[f32], c: &[f32], d: &[f32]) {
        for w in 0..WARPS {
            for r in 0..16 {
                for n in 0..8 {
                    let (mut exact, mut mag) = (c[w * 128 + r * 8 + n] as f64, c[w * 128 + r * 8 + n].abs() as f64);
                    for k in 0..kd {
                        let p = a[w * 16 * kd + r * kd + k] as f64 * b[w * kd * 8 + k * 8 + n] as f64;
                        exact += p;
                        mag += p.abs();
                    }
                    let got = d[w * 128 + r * 8 + n] as f64;
                    assert!((got - exact).abs() <= 4e-7 * mag, "warp {w} D[{r}][{n}] = {got}, plain product {exact}");
                }
            }
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(0x006d_6d61_7379_6e63)
    }

    #[test]
    fn bf16_m16n8k16_is_the_matrix_product() {
        let mut r = rng();
        for _ in 0..20 {
            let mut bf = |n: usize| -> Vec<f32> { (0..n).map(|_| bf16::from_f32(r.gen_range(-2.0f32..2.0)).to_f32()).collect() };
            let (a, b) = (bf(WARPS * 256), bf(WARPS * 128));
            let c: Vec<f32> = (0..WARPS * 128).map(|_| r.gen_range(-4.0f32..4.0)).collect();
            check(16, &a, &b, &c, &probe(0, 16, &a, &b, &c));
        }
    }

    #[test]
    fn tf32_m16n8k8_is_the_matrix_product() {
        let mut r = rng();
        for _ in 0..20 {
            // tf32 values: f32 with the low 13 mantissa bits clear
            let mut tf =
                |n: usize| -> Vec<f32> { (0..n).map(|_| f32::from_bits(r.gen_range(-2.0f32..2.0).to_bits() & 0xffff_e000)).collect() };
            let (a, b) = (tf(WARPS * 128), tf(WARPS * 64));
            let c: Vec<f32> = (0..WARPS * 128).map(|_| r.gen_range(-4.0f32..4.0)).collect();
            check(8, &a, &b, &c, &probe(1, 8, &a, &b, &c));
        }
    }

    #[test]
    fn operands_round_as_the_conversions_do() {
        // f32 operands the probe converts: bf16 round to nearest even, tf32 round to nearest, ties away
        let mut r = rng();
        let a: Vec<f32> = (0..WARPS * 256).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        let b: Vec<f32> = (0..WARPS * 128).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        let c = vec![0.0f32; WARPS * 128];
        let round_bf16 = |x: &f32| bf16::from_f32(*x).to_f32();
        let d = probe(0, 16, &a, &b, &c);
        check(16, &a.iter().map(round_bf16).collect::<Vec<_>>(), &b.iter().map(round_bf16).collect::<Vec<_>>(), &c, &d);
        let round_tf32 = |x: &f32| f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000);
        let (a8, b8) = (&a[..WARPS * 128], &b[..WARPS * 64]);
        let d = probe(1, 8, a8, b8, &c);
        check(8, &a8.iter().map(round_tf32).collect::<Vec<_>>(), &b8.iter().map(round_tf32).collect::<Vec<_>>(), &c, &d);
    }
}
