//! The compile gate: every kernel through NVRTC for sm_80 and sm_90 with
//! `--ptxas-options=-v`. Fails on any error or warning, prints registers,
//! shared memory and spills per kernel, and fails on spills in the decode and
//! verify kernel (`dnk_recurrent`).
//!
//! NVRTC comes from PyPI (`crates/backend-cuda/install-nvrtc.sh` or
//! `.ci/nvrtc.sh` install it into `<repo>/.nvrtc`); the test loads it from
//! there (or from `LD_LIBRARY_PATH`). Once installed there, or with
//! `DELTANET_REQUIRE_NVRTC=1`, the test never skips; without it anywhere the
//! test prints `skipped: <why>` and passes.

use deltanet_backend_cuda::kernels::Kernel;
use deltanet_backend_cuda::nvrtc::{compile, nvrtc_present, nvrtc_version, parse_ptxas_log, preload_nvrtc};
use std::path::Path;

#[test]
fn kernels_compile_for_sm80_and_sm90_without_warnings_or_decode_spills() {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.nvrtc/nvidia/cu13/lib");
    let required = installed.exists() || std::env::var("DELTANET_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if !nvrtc_present() && !preload_nvrtc(&installed) {
        let why = "libnvrtc.so.13 not found: run crates/backend-cuda/install-nvrtc.sh (or put it on LD_LIBRARY_PATH)";
        assert!(!required, "NVRTC is required here ({}) but {why}", installed.display());
        println!("skipped: {why}");
        return;
    }
    println!("NVRTC {:?}", nvrtc_version());
    for arch in ["sm_80", "sm_90"] {
        let c = compile(arch, &["--ptxas-options=-v"]).unwrap_or_else(|e| panic!("{e}"));
        let warnings: Vec<&str> = c.log.lines().filter(|l| l.to_ascii_lowercase().contains("warning")).collect();
        assert!(warnings.is_empty(), "{arch}: warnings:\n{}\n{}", warnings.join("\n"), c.log);
        assert!(c.cubin.len() > 1000, "{arch}: cubin of {} bytes", c.cubin.len());
        let res = parse_ptxas_log(&c.log);
        println!("{arch}: {:<14} {:>5} {:>8} {:>6} {:>12} {:>11}", "kernel", "regs", "smem B", "stack", "spill st B", "spill ld B");
        for r in &res {
            println!(
                "{arch}: {:<14} {:>5} {:>8} {:>6} {:>12} {:>11}",
                r.name, r.registers, r.shared_bytes, r.stack_bytes, r.spill_stores, r.spill_loads
            );
        }
        for k in Kernel::ALL {
            let r =
                res.iter().find(|r| r.name == k.name()).unwrap_or_else(|| panic!("{arch}: no ptxas report for {}:\n{}", k.name(), c.log));
            assert!(r.registers > 0, "{arch}: {} reports no registers", k.name());
            if k == Kernel::Recurrent {
                assert_eq!((r.spill_stores, r.spill_loads), (0, 0), "{arch}: decode/verify kernel spills");
            }
            assert!(r.shared_bytes <= 48 * 1024, "{arch}: {} uses {} bytes of static shared memory", k.name(), r.shared_bytes);
        }
    }
}
