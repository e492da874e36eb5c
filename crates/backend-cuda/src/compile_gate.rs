//! The compile gate: every kernel through NVRTC for sm_80 and sm_90 with
//! `--ptxas-options=-v`. Fails on any error or warning (the program includes
//! the static_asserts that the argument structs are laid out as in Rust),
//! prints registers, shared memory and spills per kernel, and fails on any
//! spill. Then it disassembles each cubin with `cuobjdump --dump-sass` and
//! fails unless the tensor-core extend (`dnk_extend_tc`) contains HMMA
//! instructions (the mma.sync of kernels/cuda/mma.cu reached the machine code)
//! and decode/verify (`dnk_recurrent`) 16-byte loads and stores of the state.
//! A unit test because it compiles through the crate's own NVRTC path, which
//! is not public.
//!
//! cuobjdump comes from PyPI too: `crates/backend-cuda/install-cuobjdump.sh`
//! installs it into `<repo>/.nvrtc/cuobjdump` (or name one with
//! `DELTANET_CUOBJDUMP`); where NVRTC is required and cuobjdump is missing,
//! the test fails.
//!
//! NVRTC comes from PyPI: `crates/backend-cuda/install-nvrtc.sh` installs it
//! into `<repo>/.nvrtc`; the test loads it from there (or finds it on the
//! library path or in `DELTANET_NVRTC_DIR`, see nvrtc.rs). Once installed
//! there, or with `DELTANET_REQUIRE_NVRTC=1`, the test never skips; without it
//! anywhere the test prints `skipped: <why>` and passes.

use crate::kernels::Kernel;
use crate::nvrtc::{compile, load, nvrtc_version, preload_nvrtc, WHERE};
use std::path::Path;

#[test]
fn kernels_compile_for_sm80_and_sm90_without_warnings_or_spills_and_extend_tc_uses_hmma() {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.nvrtc/nvidia/cu13/lib");
    let required = installed.exists() || std::env::var("DELTANET_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if !preload_nvrtc(&installed) && !load() {
        assert!(!required, "NVRTC is required here ({}) but {WHERE}", installed.display());
        println!("skipped: {WHERE}");
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
            assert_eq!((r.spill_stores, r.spill_loads), (0, 0), "{arch}: {} spills", k.name());
            assert!(r.shared_bytes <= 48 * 1024, "{arch}: {} uses {} bytes of static shared memory", k.name(), r.shared_bytes);
        }
        match cuobjdump() {
            Some(tool) => {
                let sass = dump_sass(&tool, &c.cubin, arch);
                let hmma = count_in_function(&sass, Kernel::ExtendTc.name(), "HMMA");
                println!("{arch}: {} has {hmma} HMMA instructions", Kernel::ExtendTc.name());
                assert!(hmma > 0, "{arch}: no HMMA in {}:\n{sass}", Kernel::ExtendTc.name());
                // decode and verify move the state in 16-byte accesses
                let rec = Kernel::Recurrent.name();
                let (ld, st) = (count_in_function(&sass, rec, "LDG.E.128"), count_in_function(&sass, rec, "STG.E.128"));
                println!("{arch}: {rec} has {ld} LDG.E.128 and {st} STG.E.128");
                assert!(ld > 0 && st > 0, "{arch}: no 16-byte state accesses in {rec}");
            }
            None => {
                assert!(!required, "cuobjdump is required with NVRTC (crates/backend-cuda/install-cuobjdump.sh, or DELTANET_CUOBJDUMP)");
                println!("{arch}: HMMA check skipped: no cuobjdump");
            }
        }
    }
}

/// cuobjdump: `DELTANET_CUOBJDUMP`, or where install-cuobjdump.sh puts it.
fn cuobjdump() -> Option<std::path::PathBuf> {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.nvrtc/cuobjdump/nvidia/cu13/bin/cuobjdump");
    std::env::var_os("DELTANET_CUOBJDUMP").map(Into::into).or(Some(installed)).filter(|p: &std::path::PathBuf| p.exists())
}

/// `cuobjdump --dump-sass` of a cubin.
fn dump_sass(tool: &Path, cubin: &[u8], arch: &str) -> String {
    let file = std::env::temp_dir().join(format!("deltanet-gate-{}-{arch}.cubin", std::process::id()));
    std::fs::write(&file, cubin).expect("write the cubin");
    // cuobjdump runs nvdisasm, which lies beside it
    let out = std::process::Command::new(tool)
        .env("NVDISASM_PATH", tool.parent().expect("a file path"))
        .arg("--dump-sass")
        .arg(&file)
        .output()
        .expect("run cuobjdump");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "cuobjdump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lines containing `op` in the SASS of function `name` (from its `Function : name` header to the next).
fn count_in_function(sass: &str, name: &str, op: &str) -> usize {
    let mut inside = false;
    let mut n = 0;
    for line in sass.lines() {
        if let Some(f) = line.trim().strip_prefix("Function : ") {
            inside = f.trim() == name;
        } else if inside && line.contains(op) {
            n += 1;
        }
    }
    n
}

#[test]
fn counts_instructions_of_one_function() {
    let sass = "\tcode for sm_90\n\t\tFunction : dnk_gate\n\t/*0010*/ FFMA R1, R2, R3, R4 ;\n\t\tFunction : dnk_extend_tc\n\
\t/*0020*/ HMMA.16816.F32.BF16 R4, R8, R12, R4 ;\n\t/*0030*/ HMMA.1688.F32.TF32 R4, R8, R12, R4 ;\n\t\tFunction : dnk_cast\n\t/*0040*/ HMMA.X ;\n";
    assert_eq!(count_in_function(sass, "dnk_extend_tc", "HMMA"), 2);
    assert_eq!(count_in_function(sass, "dnk_gate", "HMMA"), 0);
}

/// What ptxas reported for one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KernelResources {
    /// Entry name.
    name: String,
    /// Registers per thread.
    registers: u32,
    /// Static shared memory in bytes.
    shared_bytes: u32,
    /// Stack frame in bytes.
    stack_bytes: u32,
    /// Bytes of spill stores.
    spill_stores: u32,
    /// Bytes of spill loads.
    spill_loads: u32,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Parses the ptxas `-v` lines of an NVRTC log into one entry per kernel.
fn parse_ptxas_log(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        let quoted = line.split('\'').nth(1);
        if line.contains("Compiling entry function") || line.contains("Function properties for") {
            let name = quoted.map(str::to_string).or_else(|| line.rsplit(' ').next().map(str::to_string)).unwrap_or_default();
            if out.last().is_none_or(|k| k.name != name) {
                out.push(KernelResources { name, ..Default::default() });
            }
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("spill stores") {
            k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[test]
fn parses_ptxas_verbose_output() {
    let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'dnk_extend' for 'sm_90'\n\
ptxas info    : Function properties for dnk_extend\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 40 registers, used 1 barriers, 33792 bytes smem, 928 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'dnk_gate' for 'sm_90'\n\
ptxas info    : Function properties for dnk_gate\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 16 registers, 928 bytes cmem[0]\n";
    let k = parse_ptxas_log(log);
    assert_eq!(k.len(), 2);
    assert_eq!(
        k[0],
        KernelResources { name: "dnk_extend".into(), registers: 40, shared_bytes: 33792, stack_bytes: 8, spill_stores: 4, spill_loads: 12 }
    );
    assert_eq!(k[1].name, "dnk_gate");
    assert_eq!((k[1].registers, k[1].shared_bytes, k[1].spill_stores), (16, 0, 0));
}
