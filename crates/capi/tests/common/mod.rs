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
    panic!("libdeltanet.so not found next to {}", exe.display());
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
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic"])
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
