//! The CUDA C kernel sources (kernels/cuda) and the kernels' names.

/// The kernels' argument structs, the one header the kernel sources include.
pub const ARGS_HEADER: &str = include_str!("../../../kernels/cuda/args.h");
/// The name the kernel sources include [`ARGS_HEADER`] by.
pub const ARGS_HEADER_NAME: &str = "args.h";
/// Shared definitions: dtype conversions by bit operations, warp sums.
pub const COMMON: &str = include_str!("../../../kernels/cuda/common.cu");
/// Tensor-core products: `mma.sync` (bf16 m16n8k16, tf32 m16n8k8) over 16x8 output tiles.
pub const MMA: &str = include_str!("../../../kernels/cuda/mma.cu");
/// The gate.
pub const GATE: &str = include_str!("../../../kernels/cuda/gate.cu");
/// The short convolution (extend, update, verify).
pub const CONV: &str = include_str!("../../../kernels/cuda/conv.cu");
/// Fused one-token recurrence (decode, verify of chains and trees).
pub const RECURRENT: &str = include_str!("../../../kernels/cuda/recurrent.cu");
/// Speculative mode replay's delta rule (verify without state writes, commit by replaying the path).
pub const REPLAY: &str = include_str!("../../../kernels/cuda/replay.cu");
/// Chunked extend with snapshots.
pub const EXTEND: &str = include_str!("../../../kernels/cuda/extend.cu");
/// Chunked extend on tensor cores (per-chunk products in parallel, then the recurrence).
pub const EXTEND_TC: &str = include_str!("../../../kernels/cuda/extend_tc.cu");
/// Element-wise dtype conversion.
pub const CAST: &str = include_str!("../../../kernels/cuda/cast.cu");
/// Commit of accepted drafts (scratch step and conv window into the slot).
pub const COMMIT: &str = include_str!("../../../kernels/cuda/commit.cu");

/// The whole program NVRTC compiles (with [`ARGS_HEADER`] as its one header):
/// common definitions, every kernel, then the checks that the argument structs
/// are laid out as on the host and that the kernels' limits are the host's.
pub fn program_source() -> String {
    [COMMON, MMA, GATE, CONV, RECURRENT, REPLAY, EXTEND, EXTEND_TC, CAST, COMMIT, &crate::args::layout_asserts(), &constant_asserts()]
        .join("\n")
}

/// C++ `static_assert`s that each `#define` the host mirrors below has the host's value.
fn constant_asserts() -> String {
    let tc_floats = format!("DN_TC_CHUNK_FLOATS({MAX_HEAD_DIM}, 96)");
    [
        ("DN_ROWS_PER_BLOCK", ROWS_PER_BLOCK),
        ("DN_KMAX", MAX_HEAD_DIM),
        ("DN_MAX_CONV_W", MAX_CONV_WIDTH),
        ("DN_BV", EXTEND_ROWS),
        ("DN_CHUNK", CHUNK),
        ("DN_TC_BV", EXTEND_TC_ROWS),
        (tc_floats.as_str(), tc_chunk_floats(MAX_HEAD_DIM, 96)),
    ]
    .iter()
    .map(|(name, v)| format!("static_assert({name} == {v}, \"{name} differs from the host's constant\");\n"))
    .collect()
}

/// A kernel of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `dnk_gate`.
    Gate,
    /// `dnk_conv`.
    Conv,
    /// `dnk_recurrent`.
    Recurrent,
    /// `dnk_replay`.
    Replay,
    /// `dnk_extend`.
    Extend,
    /// `dnk_extend_tc`.
    ExtendTc,
    /// `dnk_cast`.
    Cast,
    /// `dnk_commit`.
    Commit,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 8] =
        [Kernel::Gate, Kernel::Conv, Kernel::Recurrent, Kernel::Replay, Kernel::Extend, Kernel::ExtendTc, Kernel::Cast, Kernel::Commit];

    /// The `extern "C"` entry name. `dnk_`, not `dn_`: `dn_` is the public C
    /// ABI's prefix (crates/capi), and the `emulate` build links these
    /// kernels as host functions into the same library, where `dn_gate` or
    /// `dn_extend` would collide with the C entry points of those names.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Gate => "dnk_gate",
            Kernel::Conv => "dnk_conv",
            Kernel::Recurrent => "dnk_recurrent",
            Kernel::Replay => "dnk_replay",
            Kernel::Extend => "dnk_extend",
            Kernel::ExtendTc => "dnk_extend_tc",
            Kernel::Cast => "dnk_cast",
            Kernel::Commit => "dnk_commit",
        }
    }
}

/// Rows of V one `dnk_recurrent` or `dnk_replay` block handles (`DN_ROWS_PER_BLOCK`).
pub const ROWS_PER_BLOCK: usize = 16;
/// Largest K the kernels take (`DN_KMAX`).
pub const MAX_HEAD_DIM: usize = 128;
/// Largest conv width (`DN_MAX_CONV_W`).
pub const MAX_CONV_WIDTH: usize = 8;
/// State rows v one `dnk_extend` block owns (`DN_BV`).
pub const EXTEND_ROWS: usize = 32;
/// Chunk length of `dnk_extend` (`DN_CHUNK`).
pub const CHUNK: usize = 64;
/// State rows one `dnk_extend_tc` recurrence block owns (`DN_TC_BV`).
pub const EXTEND_TC_ROWS: usize = 32;

/// Workspace floats of one (chunk, value head) of `dnk_extend_tc` (`DN_TC_CHUNK_FLOATS`):
/// W `[64][K]`, U `[64][V]`, M `[64][64]`, and four per-row vectors.
pub const fn tc_chunk_floats(k: usize, v: usize) -> usize {
    CHUNK * k + CHUNK * v + CHUNK * CHUNK + 4 * CHUNK
}
