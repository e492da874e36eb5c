//! The CUDA C kernel sources (kernels/cuda), their argument block and names.

use deltanet_core::DType;

/// Shared definitions: argument block, dtype conversions by bit operations, warp sums.
pub const COMMON: &str = include_str!("../../../kernels/cuda/common.cu");
/// The gate.
pub const GATE: &str = include_str!("../../../kernels/cuda/gate.cu");
/// The short convolution (extend, update, verify).
pub const CONV: &str = include_str!("../../../kernels/cuda/conv.cu");
/// Fused one-token recurrence (decode, verify of chains and trees).
pub const RECURRENT: &str = include_str!("../../../kernels/cuda/recurrent.cu");
/// Chunked extend with snapshots.
pub const EXTEND: &str = include_str!("../../../kernels/cuda/extend.cu");
/// Element-wise dtype conversion.
pub const CAST: &str = include_str!("../../../kernels/cuda/cast.cu");
/// Commit of accepted drafts (scratch step and conv window into the slot).
pub const COMMIT: &str = include_str!("../../../kernels/cuda/commit.cu");

/// The whole program NVRTC compiles: common definitions, then every kernel.
pub fn program_source() -> String {
    [COMMON, GATE, CONV, RECURRENT, EXTEND, CAST, COMMIT].join("\n")
}

/// A kernel of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `dn_gate`.
    Gate,
    /// `dn_conv`.
    Conv,
    /// `dn_recurrent`.
    Recurrent,
    /// `dn_extend`.
    Extend,
    /// `dn_cast`.
    Cast,
    /// `dn_commit`.
    Commit,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 6] = [Kernel::Gate, Kernel::Conv, Kernel::Recurrent, Kernel::Extend, Kernel::Cast, Kernel::Commit];

    /// The `extern "C"` entry name.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Gate => "dn_gate",
            Kernel::Conv => "dn_conv",
            Kernel::Recurrent => "dn_recurrent",
            Kernel::Extend => "dn_extend",
            Kernel::Cast => "dn_cast",
            Kernel::Commit => "dn_commit",
        }
    }
}

/// Rows of V one `dn_recurrent` block handles (`DN_ROWS_PER_BLOCK`).
pub const ROWS_PER_BLOCK: usize = 16;
/// Largest K the kernels take (`DN_KMAX`).
pub const MAX_HEAD_DIM: usize = 128;
/// Largest conv width (`DN_MAX_CONV_W`).
pub const MAX_CONV_WIDTH: usize = 8;
/// State rows v one `dn_extend` block owns (`DN_BV`).
pub const EXTEND_ROWS: usize = 32;
/// Chunk length of `dn_extend` (`DN_CHUNK`).
pub const CHUNK: usize = 64;

/// The argument block every kernel takes by value (mirrors `struct Args` in common.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Args {
    /// Device addresses.
    pub p: [u64; 16],
    /// Integers.
    pub n: [i64; 40],
    /// Floats.
    pub f: [f32; 4],
}

impl Default for Args {
    fn default() -> Self {
        Args { p: [0; 16], n: [0; 40], f: [0.0; 4] }
    }
}

// SAFETY: `Args` is a #[repr(C)] plain-old-data struct whose layout matches the
// kernels' `struct Args` (16 u64, 40 i64, 4 f32; no padding), passed by value.
unsafe impl cudarc::driver::DeviceRepr for Args {}

/// The kernels' dtype code.
pub fn dtype_code(d: DType) -> i64 {
    match d {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
    }
}
