//! The `deltanet` binary end to end.

use std::process::Command;

fn deltanet(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deltanet")).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn info_lists_every_backend() {
    let (ok, out) = deltanet(&["info"]);
    assert!(ok, "{out}");
    for name in ["cpu", "cpu-vk", "cuda:0", "npu:0"] {
        assert!(out.contains(name), "{out}");
    }
}

#[test]
fn replay_of_a_malformed_file_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("deltanet-bad-{}.safetensors", std::process::id()));
    std::fs::write(&path, b"garbage").unwrap();
    let (ok, out) = deltanet(&["replay", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert!(!ok);
    assert!(out.contains("replay file"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn unknown_backend_and_model_are_errors() {
    let (ok, out) = deltanet(&["run", "--backend", "tpu"]);
    assert!(!ok && out.contains("unknown backend"), "{out}");
    let (ok, out) = deltanet(&["run", "--model", "llama"]);
    assert!(!ok && out.contains("unknown model"), "{out}");
}

#[cfg(feature = "cpu")]
#[test]
fn run_serves_a_small_workload_and_checks_it() {
    for backend in ["cpu", "cpu-vk"] {
        let (ok, out) = deltanet(&[
            "run",
            "--model",
            "custom:3,2,4,32,48",
            "--backend",
            backend,
            "--requests",
            "6",
            "--prompt-len",
            "70",
            "--chunk",
            "48",
            "--decode",
            "7",
            "--draft",
            "3",
            "--max-running",
            "3",
            "--check",
            "3",
            "--quiet",
        ]);
        assert!(ok, "{out}");
        for phase in ["prefill", "decode", "verify+commit", "final state", "all checks passed"] {
            assert!(out.contains(phase), "{out}");
        }
        assert!(!out.contains(" NO"), "{out}");
    }
}

#[cfg(feature = "cpu")]
#[test]
fn run_in_both_spec_modes_checks_and_reports_each_modes_memory() {
    let spec_kib = |mode: &str| -> f64 {
        let args = ["run", "--model", "custom:2,2,4,32,32", "--requests", "4", "--prompt-len", "40", "--chunk", "32"];
        let (ok, out) = deltanet(&[&args[..], &["--decode", "6", "--draft", "3", "--spec-mode", mode, "--check", "2", "--quiet"]].concat());
        assert!(ok && out.contains("all checks passed") && !out.contains(" NO"), "{out}");
        let line =
            out.lines().find(|l| l.starts_with(&format!("speculative buffers ({mode} mode, D = 3)"))).unwrap_or_else(|| panic!("{out}"));
        line.split(", ")
            .last()
            .and_then(|x| x.strip_suffix(" KiB per request"))
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    let (scratch, replay) = (spec_kib("scratch"), spec_kib("replay"));
    assert!(replay > 0.0 && replay * 5.0 < scratch, "replay {replay} KiB vs scratch {scratch} KiB");
    let (ok, out) = deltanet(&["run", "--spec-mode", "eager"]);
    assert!(!ok && out.contains("speculative mode"), "{out}");
}

#[cfg(feature = "cpu")]
#[test]
fn replay_of_a_golden_file_passes_and_writes_outputs() {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/gdn_f32_varlen.safetensors");
    let out_path = std::env::temp_dir().join(format!("deltanet-out-{}.safetensors", std::process::id()));
    let (ok, out) = deltanet(&["replay", golden, "--backend", "cpu-vk", "--out", out_path.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("vs the file's expected outputs"), "{out}");
    assert!(out_path.exists());
    std::fs::remove_file(out_path).unwrap();
}

#[cfg(feature = "cpu")]
#[test]
fn replay_writes_its_plot() {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/gdn_f32_varlen.safetensors");
    let png = std::env::temp_dir().join(format!("deltanet-replay-plot-{}.png", std::process::id()));
    let (ok, out) = deltanet(&["replay", golden, "--plot", png.to_str().unwrap()]);
    assert!(ok, "{out}");
    let bytes = std::fs::read(&png).unwrap();
    // PNG signature, then the IHDR chunk: width and height, big-endian
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    let (w, h) = (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), deltanet_cli::plot::replay_errors::SIZE);
    std::fs::remove_file(png).unwrap();
}
