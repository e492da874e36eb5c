//! Finding the built library and compiling C/C++ against it, for the tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the `libdeltanet.so` cargo built for this test run
/// (`target/<profile>/deps`, next to the test binary, or its parent).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir").to_path_buf();
    for dir in [deps.clone(), deps.parent().expect("profile dir").to_path_buf()] {
        if dir.join("libdeltanet.so").is_file() {
            return dir;
        }
    }
    panic!(
        "libdeltanet.so not found next to {} (cargo test does not build cdylibs: run `cargo build -p deltanet-capi` \
         with the same features first, as scripts/test.sh does)",
        exe.display()
    );
}

/// The shared library itself.
pub fn shared_lib() -> PathBuf {
    lib_dir().join("libdeltanet.so")
}

/// The repository's include/ directory.
pub fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

/// Compiles `src` (C, or C++ when `cpp`) into `exe`, linked against libdeltanet.so
/// with an rpath, warnings as errors; `includes` are extra header directories.
pub fn compile(src: &Path, exe: &Path, cpp: bool, includes: &[&Path]) {
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .cpp(cpp)
        .target(env!("DN_BUILD_TARGET"))
        .host(env!("DN_BUILD_HOST"))
        .opt_level(0)
        .debug(false)
        .get_compiler();
    let lib = lib_dir();
    let mut cmd = compiler.to_command();
    cmd.arg(if cpp { "-std=c++17" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-pthread"])
        .arg("-I")
        .arg(include_dir())
        .args(includes.iter().flat_map(|d| [Path::new("-I"), d]))
        .arg(src)
        .arg("-o")
        .arg(exe)
        .arg(format!("-L{}", lib.display()))
        .arg("-ldeltanet")
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    let out = cmd.output().expect("run the C compiler");
    assert!(
        out.status.success(),
        "compiling {} failed:\n{}\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a compiled program; panics with its output unless it exits 0.
pub fn run(exe: &Path, args: &[&Path]) -> String {
    let out = Command::new(exe).args(args).output().expect("run the program");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} failed ({}):\n{text}", exe.display(), out.status);
    text
}

/// A fresh scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = lib_dir().join(format!("capi-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes one record of the C clients' file format: a little-endian `u64`
/// count, then that many `f32`.
pub fn write_record(f: &mut impl std::io::Write, values: &[f32]) {
    f.write_all(&(values.len() as u64).to_le_bytes()).unwrap();
    for v in values {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
}

/// Every record of a file the C clients wrote.
pub fn read_records(path: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).expect("C client outputs");
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 8;
        out.push(bytes[at..at + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect());
        at += 4 * n;
    }
    out
}

/// Error ratio (fla's `rms(x - ref) / rms(ref)`) of a C result against the oracle.
pub fn check(what: &str, got: &[f32], want: &[f64], seed: u64) {
    const TOL: f64 = facade::tolerance::REFERENCE;
    assert_eq!(got.len(), want.len(), "{what}: length (seed {seed})");
    let e = facade::oracle::error_ratio(got, want);
    assert!(e.is_finite() && e < TOL, "{what}: error ratio {e:.3e} >= {TOL:.0e} against the oracle (seed {seed})");
}

/// A seed for fresh random inputs (reported by every failing check).
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}
