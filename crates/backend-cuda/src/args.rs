//! The argument block of each kernel: `#[repr(C)]` mirrors of the structs in
//! kernels/cuda/args.h, field for field (what each field means is documented
//! there, once). A kernel takes its struct by value; the launchers pass the
//! struct's bytes.
//!
//! The two sides are checked against each other: [`layout_asserts`] turns the
//! Rust offsets into `static_assert`s that NVRTC compiles with the kernels, and
//! a test compares the emulation's `sizeof`/`offsetof` table
//! (kernels/cuda/emu/layout.cpp) with [`LAYOUTS`].

use crate::kernels::Kernel;
use deltanet_core::DType;
use std::mem::{offset_of, size_of};

/// Where a struct's fields lie, as Rust lays them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructLayout {
    /// The struct's name in args.h.
    pub name: &'static str,
    /// `size_of`.
    pub size: usize,
    /// Each field's name and `offset_of`, in declaration order.
    pub fields: &'static [(&'static str, usize)],
}

/// Declares each struct with C field types noted beside the Rust ones, checks
/// that it has no padding (so every byte a kernel reads was written by the
/// host), and lists its layout in [`LAYOUTS`].
macro_rules! kernel_args {
    ($( $(#[$m:meta])* struct $name:ident { $( $field:ident : $ty:ty ),* $(,)? } )*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq)]
            #[allow(missing_docs)] // fields are documented in kernels/cuda/args.h
            pub struct $name { $( pub $field: $ty ),* }

            const _: () = assert!(size_of::<$name>() == 0 $(+ size_of::<$ty>())*, concat!(stringify!($name), " has padding"));
        )*

        /// The layout of every argument struct.
        pub const LAYOUTS: &[StructLayout] = &[
            $( StructLayout { name: stringify!($name), size: size_of::<$name>(), fields: &[ $( (stringify!($field), offset_of!($name, $field)) ),* ] } ),*
        ];
    };
}

// Device addresses are u64 (pointers in C), every integer i64 (`long long`), `float` f32.
kernel_args! {
    /// `dnk_gate`.
    struct GateArgs {
        a: u64, b: u64, a_log: u64, dt_bias: u64, g: u64, beta: u64,
        tokens: i64, hv: i64, a_row: i64, b_row: i64, g_row: i64, beta_row: i64,
        a_dtype: i64, b_dtype: i64,
    }
    /// `dnk_conv` (extend, update and verify).
    struct ConvArgs {
        x: u64, weight: u64, bias: u64, out: u64, state: u64, windows: u64, seqs: u64, snapshots: u64, parents: u64,
        channels: i64, width: i64, x_row: i64, out_row: i64, draft: i64,
        x_dtype: i64, out_dtype: i64, state_dtype: i64, mode: i64,
    }
    /// The tensors, head dimensions and parameters of both delta-rule kernels.
    struct DeltaArgs {
        q: u64, k: u64, v: u64, g: u64, beta: u64, o: u64,
        q_token: i64, q_head: i64, k_token: i64, k_head: i64, v_token: i64, v_head: i64,
        g_token: i64, beta_token: i64, o_token: i64, o_head: i64,
        hk: i64, hv: i64, dk: i64, dv: i64,
        q_dtype: i64, k_dtype: i64, v_dtype: i64, beta_dtype: i64, o_dtype: i64, head_mapping: i64, l2norm: i64,
        scale: f32, pad: f32,
    }
    /// `dnk_recurrent` (decode and verify).
    struct RecurrentArgs {
        io: DeltaArgs,
        state: u64, scratch: u64, slots: u64, parents: u64,
        draft: i64,
        state_dtype: i64, mode: i64,
    }
    /// `dnk_replay` (replay verify and commit).
    struct ReplayArgs {
        io: DeltaArgs,
        state: u64, records: u64, slots: u64, parents: u64, commits: u64, paths: u64,
        draft: i64,
        state_dtype: i64, mode: i64,
    }
    /// `dnk_extend`.
    struct ExtendArgs {
        io: DeltaArgs,
        state: u64, seqs: u64, chunks: u64, snapshot_slots: u64, workspace: u64,
        seqs_count: i64,
        state_dtype: i64,
    }
    /// `dnk_extend_tc` (both phases).
    struct ExtendTcArgs {
        io: DeltaArgs,
        state: u64, seqs: u64, chunks: u64, snapshot_slots: u64, workspace: u64,
        seqs_count: i64, chunk_begin: i64, chunk_count: i64,
        state_dtype: i64, phase: i64, precision: i64,
    }
    /// `dnk_cast`.
    struct CastArgs {
        src: u64, dst: u64,
        count: i64,
        src_dtype: i64, dst_dtype: i64,
    }
    /// `dnk_commit`.
    struct CommitArgs {
        scratch: u64, state: u64, windows: u64, conv: u64, targets: u64,
        state_units: i64, conv_units: i64, draft: i64,
    }
}

/// The argument struct of one kernel: launching it names the kernel, so a
/// kernel cannot be given another kernel's arguments.
pub trait KernelArgs: cudarc::driver::DeviceRepr + Copy + Send + Sync + 'static {
    /// The kernel these arguments are for.
    const KERNEL: Kernel;
}

macro_rules! launches {
    ($($name:ident => $kernel:ident),* $(,)?) => {
        $(
            impl KernelArgs for $name {
                const KERNEL: Kernel = Kernel::$kernel;
            }
            // SAFETY: a #[repr(C)] struct of integers and floats only, without
            // padding (asserted above), laid out as its C mirror in args.h
            // (checked by `layout_asserts` under NVRTC and by the layout test);
            // the kernel takes it by value.
            unsafe impl cudarc::driver::DeviceRepr for $name {}
        )*
    };
}

launches! {
    GateArgs => Gate,
    ConvArgs => Conv,
    RecurrentArgs => Recurrent,
    ReplayArgs => Replay,
    ExtendArgs => Extend,
    ExtendTcArgs => ExtendTc,
    CastArgs => Cast,
    CommitArgs => Commit,
}

/// The kernels' dtype code (`DT_*` in common.cu).
pub fn dtype_code(d: DType) -> i64 {
    match d {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
    }
}

/// C++ `static_assert`s that every struct of args.h has the size and field
/// offsets of its Rust mirror; NVRTC compiles them with the kernels, so a
/// layout mismatch is a compile error on the real target.
pub fn layout_asserts() -> String {
    let mut s = String::from("// generated by crates/backend-cuda/src/args.rs: the host's layout of each argument struct\n");
    for l in LAYOUTS {
        s += &format!("static_assert(sizeof({0}) == {1}, \"{0}: size differs from the Rust struct\");\n", l.name, l.size);
        for (f, off) in l.fields {
            s += &format!(
                "static_assert(__builtin_offsetof({0}, {f}) == {off}, \"{0}::{f}: offset differs from the Rust struct\");\n",
                l.name
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_has_one_argument_struct() {
        let mut kernels = [
            GateArgs::KERNEL,
            ConvArgs::KERNEL,
            RecurrentArgs::KERNEL,
            ReplayArgs::KERNEL,
            ExtendArgs::KERNEL,
            ExtendTcArgs::KERNEL,
            CastArgs::KERNEL,
            CommitArgs::KERNEL,
        ];
        kernels.sort_by_key(|k| k.name());
        let mut all = Kernel::ALL;
        all.sort_by_key(|k| k.name());
        assert_eq!(kernels, all);
    }

    #[test]
    fn the_asserts_cover_every_field() {
        let s = layout_asserts();
        let fields: usize = LAYOUTS.iter().map(|l| l.fields.len()).sum();
        assert_eq!(s.matches("__builtin_offsetof").count(), fields);
        assert_eq!(s.matches("sizeof(").count(), LAYOUTS.len());
        assert!(s.contains("static_assert(__builtin_offsetof(ExtendArgs, workspace) == 256,"), "{s}");
    }
}
