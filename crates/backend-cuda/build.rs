//! With the `emulate` feature, compiles the CUDA kernels with the host C++
//! compiler against the emulation header in kernels/cuda/emu.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../kernels/cuda");
    #[cfg(feature = "emulate")]
    {
        for f in [
            "args.h",
            "common.cu",
            "mma.cu",
            "gate.cu",
            "conv.cu",
            "recurrent.cu",
            "replay.cu",
            "extend.cu",
            "extend_tc.cu",
            "cast.cu",
            "commit.cu",
            "emu/emu.h",
            "emu/mma.h",
            "emu/mma_probe.cu",
            "emu/emu.cpp",
            "emu/layout.cpp",
        ] {
            println!("cargo:rerun-if-changed=../../kernels/cuda/{f}");
        }
        cc::Build::new()
            .cpp(true)
            .std("c++20")
            .file("../../kernels/cuda/emu/emu.cpp")
            .file("../../kernels/cuda/emu/layout.cpp")
            .flag("-pthread")
            .flag("-Wno-unknown-pragmas")
            .flag("-ffp-contract=off")
            .warnings(true)
            .extra_warnings(true)
            .warnings_into_errors(true)
            .opt_level(2)
            .compile("deltanet_cuda_emu");
        println!("cargo:rustc-link-lib=pthread");
    }
}
