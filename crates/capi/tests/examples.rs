//! The C example of the README (examples/c/minimal.c, checked against the
//! f64 oracle) and the C++ RAII
//! example (examples/cpp/raii.cpp) compile against include/deltanet.h with
//! warnings as errors, link against libdeltanet.so and run. The C++ example
//! checks an invariant itself (prefill(T) + decode == prefill(T+1), and a
//! double free surfacing as a dn::Error with DN_ERR_DOUBLE_FREE).

mod common;

use std::path::Path;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn readme_c_example_runs() {
    let dir = common::scratch("minimal");
    let exe = dir.join("minimal");
    common::compile(&examples().join("c/minimal.c"), &exe, false, &[]);
    let out = common::run(&exe, &[]);
    let values: Vec<f32> = out.trim().trim_start_matches("o[T-1] =").split_whitespace().map(|v| v.parse().expect("a float")).collect();
    assert_eq!(values.len(), 4, "{out}");
    // The example's inputs, as it computes them, through the f64 oracle.
    let t = 8;
    let dims = facade::ModelDims::new(1, 1, 4, 4, 4).unwrap();
    let qk: Vec<f32> = (0..t).flat_map(|t| (0..4).map(move |i| 0.1f32 * (t + i) as f32)).collect();
    let v: Vec<f32> = (0..t).flat_map(|_| (0..4).map(|i| 0.5f32 - 0.1f32 * i as f32)).collect();
    let (g, beta) = (vec![-0.05f32; t], vec![0.5f32; t]);
    let want = facade::oracle::gated_delta_rule(&dims, &facade::DeltaParams::new(&dims), &qk, &qk, &v, &g, &beta, &[0, t], None);
    let e = facade::oracle::error_ratio(&values, &want.o[(t - 1) * 4..]);
    assert!(e < facade::tolerance::REFERENCE, "error ratio {e:.3e} against the oracle: {out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cpp_raii_example_runs() {
    let dir = common::scratch("raii");
    let exe = dir.join("raii");
    common::compile(&examples().join("cpp/raii.cpp"), &exe, true, &[&examples().join("cpp")]);
    let out = common::run(&exe, &[]);
    assert!(out.contains("refused as expected"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

/// deltanet.pc.in, installed the way install.sh installs it (into a scratch
/// prefix), gives the flags that build and link the README example.
#[test]
fn pkg_config_file_builds_the_c_example() {
    let dir = common::scratch("pkgconfig");
    let prefix = dir.join("prefix");
    for sub in ["lib/pkgconfig", "include"] {
        std::fs::create_dir_all(prefix.join(sub)).unwrap();
    }
    std::fs::copy(common::shared_lib(), prefix.join("lib/libdeltanet.so")).unwrap();
    std::fs::copy(common::include_dir().join("deltanet.h"), prefix.join("include/deltanet.h")).unwrap();
    let pc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deltanet.pc.in")).unwrap();
    std::fs::write(prefix.join("lib/pkgconfig/deltanet.pc"), pc.replace("@PREFIX@", prefix.to_str().unwrap())).unwrap();
    let flags = std::process::Command::new("pkg-config")
        .args(["--cflags", "--libs", "deltanet"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .expect("run pkg-config");
    assert!(flags.status.success(), "pkg-config: {}", String::from_utf8_lossy(&flags.stderr));
    let flags = String::from_utf8(flags.stdout).unwrap();
    let exe = dir.join("minimal");
    let cc = std::process::Command::new("cc")
        .arg("-std=c11")
        .arg(examples().join("c/minimal.c"))
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(cc.status.success(), "cc {flags}: {}", String::from_utf8_lossy(&cc.stderr));
    assert!(common::run(&exe, &[]).starts_with("o[T-1] ="));
    std::fs::remove_dir_all(&dir).ok();
}
