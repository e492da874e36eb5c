//! Replay files: parsing and its typed errors (every build), and replaying the
//! golden files through the CPU backends (with `cpu`).

#[cfg(feature = "cpu")]
use deltanet::tolerance::{F32_ELEMENTWISE, F32_LONG, REFERENCE};
use deltanet::DType;
use deltanet_cli::replay::{ReplayFile, ReplayInputs};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden").join(name)
}

struct T {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32t(name: &'static str, shape: &[usize], seed: u32) -> T {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 1000.0 - 0.5).collect();
    T { name, dtype: Dtype::F32, shape: shape.to_vec(), bytes: DType::F32.encode_vec(&vals) }
}

fn cu(vals: &[i64]) -> T {
    T { name: "cu_seqlens", dtype: Dtype::I64, shape: vec![vals.len()], bytes: vals.iter().flat_map(|v| v.to_le_bytes()).collect() }
}

fn file(ts: &[T], meta: &[(&str, &str)]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> =
        ts.iter().map(|t| (t.name.to_string(), TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap())).collect();
    let md: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    safetensors::serialize(views, &Some(md)).unwrap()
}

/// A valid delta-level file: 2 sequences (3 + 5 tokens), HK 1, HV 2, K 4, V 3.
fn valid() -> Vec<T> {
    let mut g = f32t("g", &[8, 2], 7);
    let gv: Vec<f32> = DType::F32.decode_vec(&g.bytes).iter().map(|x| -0.1 - x.abs()).collect();
    g.bytes = DType::F32.encode_vec(&gv);
    vec![f32t("q", &[8, 1, 4], 1), f32t("k", &[8, 1, 4], 2), f32t("v", &[8, 2, 3], 3), g, f32t("beta", &[8, 2], 4), cu(&[0, 3, 8])]
}

fn err_of(ts: Vec<T>) -> String {
    ReplayFile::parse(&file(&ts, &[])).unwrap_err().to_string()
}

#[test]
fn golden_files_parse_with_their_conventions() {
    let f = ReplayFile::parse(&std::fs::read(golden("gdn_f32_tiled.safetensors")).unwrap()).unwrap();
    assert_eq!(f.dims.head_mapping, deltanet::HeadMapping::Tiled);
    assert_eq!((f.dims.num_k_heads, f.dims.num_v_heads, f.dims.head_k_dim), (2, 4, 32));
    let f = ReplayFile::parse(&std::fs::read(golden("layer_f32.safetensors")).unwrap()).unwrap();
    assert!(matches!(f.inputs, ReplayInputs::Layer(_)));
    assert_eq!(f.dims.conv_dim(), 256);
    let f = ReplayFile::parse(&std::fs::read(golden("gdn_bf16.safetensors")).unwrap()).unwrap();
    match &f.inputs {
        ReplayInputs::Delta(d) => assert_eq!(d.q.dtype, DType::BF16),
        _ => panic!("delta-level"),
    }
    assert_eq!(f.params.scale, 0.125);
}

#[test]
fn valid_synthetic_file_parses_with_metadata() {
    let f = ReplayFile::parse(&file(&valid(), &[("chunk_splits", "2, 1"), ("use_qk_l2norm", "false"), ("scale", "0.25")])).unwrap();
    assert_eq!(f.chunk_splits, vec![1, 2]);
    assert!(!f.params.use_qk_l2norm);
    assert_eq!(f.params.scale, 0.25);
    assert_eq!(f.tokens(), 8);
}

#[test]
fn malformed_files_name_the_tensor() {
    let mut ts = valid();
    ts.retain(|t| t.name != "k");
    assert!(err_of(ts).contains("`k`"));

    let mut ts = valid();
    ts[0] = f32t("q", &[8, 4], 1);
    assert!(err_of(ts).contains("`q` has rank 2"));

    let mut ts = valid();
    ts[2] = f32t("v", &[7, 2, 3], 1);
    assert!(err_of(ts).contains("`v`"));

    let mut ts = valid();
    ts[3] = T { name: "g", dtype: Dtype::BF16, shape: vec![8, 2], bytes: vec![0; 32] };
    assert!(err_of(ts).contains("`g` must be f32"));

    let mut ts = valid();
    ts[5] = cu(&[0, 5, 3]);
    assert!(err_of(ts).contains("cu_seqlens[2]"));

    let mut ts = valid();
    ts[5] = T { name: "cu_seqlens", dtype: Dtype::I32, shape: vec![3], bytes: vec![0; 12] };
    assert!(err_of(ts).contains("cu_seqlens"));

    let mut ts = valid();
    ts[1] = T { name: "k", dtype: Dtype::I32, shape: vec![8, 1, 4], bytes: vec![0; 128] };
    assert!(err_of(ts).contains("`k` has dtype"));

    let mut ts = valid();
    ts.push(f32t("initial_state", &[2, 2, 3, 4], 9));
    assert!(err_of(ts).contains("`initial_state`"));

    let e = ReplayFile::parse(&file(&valid(), &[("head_mapping", "diagonal")])).unwrap_err().to_string();
    assert!(e.contains("head_mapping"));
    let e = ReplayFile::parse(&file(&valid(), &[("chunk_splits", "4,x")])).unwrap_err().to_string();
    assert!(e.contains("chunk_splits"));
    assert!(ReplayFile::parse(b"not a safetensors file").is_err());
    assert!(ReplayFile::parse(&[]).is_err());
}

#[test]
fn truncated_and_garbled_bytes_never_panic() {
    let good = file(&valid(), &[]);
    for cut in (0..good.len()).step_by(7) {
        let _ = ReplayFile::parse(&good[..cut]);
    }
    let mut bad = good.clone();
    for i in (8..bad.len()).step_by(13) {
        bad[i] ^= 0x5a;
        let _ = ReplayFile::parse(&bad);
    }
}

#[cfg(feature = "cpu")]
mod on_cpu {
    use super::*;
    use deltanet::Backend;
    use deltanet_cli::replay;

    const GOLDEN: [&str; 5] = [
        "gdn_f32_varlen.safetensors",
        "gdn_f32_noinit.safetensors",
        "gdn_f32_tiled.safetensors",
        "gdn_bf16.safetensors",
        "layer_f32.safetensors",
    ];

    #[test]
    fn golden_files_match_the_oracle_and_the_reference_outputs_on_both_layouts() {
        for name in GOLDEN {
            let f = ReplayFile::parse(&std::fs::read(golden(name)).unwrap()).unwrap();
            for backend in ["cpu", "cpu-vk"] {
                let b = Backend::from_name(backend).unwrap();
                let out = replay::run(&b, &f).unwrap();
                let r = replay::report(&f, &out);
                assert!(r.o_ratio <= F32_LONG && r.state_ratio <= F32_LONG, "{name} on {backend}: {r:?}");
                let (eo, es) = r.vs_expected.expect("golden files carry expected outputs");
                assert!(eo <= REFERENCE && es <= REFERENCE, "{name} on {backend} vs fla/transformers: o {eo:e} state {es:e}");
                if let Some(c) = r.conv_ratio {
                    assert!(c <= F32_ELEMENTWISE, "{name}: conv state {c:e}");
                }
                assert!(r.first_jump.is_none(), "{name}: {r:?}");
            }
        }
    }

    #[test]
    fn chunk_splits_change_nothing_at_multiples_of_64() {
        let bytes = std::fs::read(golden("gdn_f32_varlen.safetensors")).unwrap();
        let whole = ReplayFile::parse(&bytes).unwrap();
        let mut split = whole.clone();
        split.chunk_splits = vec![64, 128];
        let b = Backend::cpu().unwrap();
        let (a, c) = (replay::run(&b, &whole).unwrap(), replay::run(&b, &split).unwrap());
        assert_eq!(a.o, c.o);
        assert_eq!(a.final_state, c.final_state);
        let mut odd = whole.clone();
        odd.chunk_splits = vec![1, 63, 65];
        let r = replay::report(&odd, &replay::run(&b, &odd).unwrap());
        assert!(r.o_ratio <= F32_LONG && r.state_ratio <= F32_LONG, "{r:?}");
    }

    #[test]
    fn outputs_written_and_read_back() {
        let f = ReplayFile::parse(&std::fs::read(golden("layer_f32.safetensors")).unwrap()).unwrap();
        let out = replay::run(&Backend::cpu().unwrap(), &f).unwrap();
        let path = std::env::temp_dir().join(format!("deltanet-replay-{}.safetensors", std::process::id()));
        replay::write_outputs(&path, &f, &out).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(DType::F32.decode_vec(st.tensor("o").unwrap().data()), out.o);
        assert_eq!(st.tensor("final_state").unwrap().shape(), &[2, 4, 32, 32]);
        assert_eq!(st.tensor("conv_state_out").unwrap().shape(), &[2, 256, 3]);
        std::fs::remove_file(path).unwrap();
    }
}

/// A layer-level file of `t` tokens for HK = HV = 1 and the given conv_dim, K
/// and V declared in metadata (no initial state).
fn layer_file(t: usize, conv_dim: usize, kd: &str, vd: &str) -> Vec<u8> {
    let ts = vec![
        f32t("mixed_qkv", &[t, conv_dim], 1),
        f32t("a", &[t, 1], 2),
        f32t("b", &[t, 1], 3),
        f32t("A_log", &[1], 4),
        f32t("dt_bias", &[1], 5),
        f32t("conv_weight", &[conv_dim, 4], 6),
        cu(&[0, t as i64]),
    ];
    file(&ts, &[("head_k_dim", kd), ("head_v_dim", vd)])
}

#[test]
fn hostile_dims_are_errors_not_panics_or_aborts() {
    // K = 2^63: 2*K wrapped to 0 (a division by zero); V = 2^63: HV*V wrapped to 0
    for (kd, vd) in [("9223372036854775808", "4"), ("4", "9223372036854775808"), ("18446744073709551615", "18446744073709551615")] {
        let e = ReplayFile::parse(&layer_file(2, 12, kd, vd)).unwrap_err().to_string();
        assert!(e.contains("replay file") && e.contains("conv_dim"), "K {kd} V {vd}: {e}");
    }
    // a consistent file whose declared K = V = 2^17 would need 2^34 state elements
    let big = 1usize << 17;
    let bytes = layer_file(1, 3 * big, &big.to_string(), &big.to_string());
    let e = ReplayFile::parse(&bytes).unwrap_err().to_string();
    assert!(e.contains("more than") && e.contains(&format!("{}-byte file", bytes.len())), "{e}");
    // a 1-token delta-level file with K = V = 2^15 carries 256 KiB and would need 4 GiB of state
    let k = 1usize << 15;
    let mut ts = vec![f32t("q", &[1, 1, k], 1), f32t("k", &[1, 1, k], 2), f32t("v", &[1, 1, k], 3)];
    ts.extend([f32t("g", &[1, 1], 4), f32t("beta", &[1, 1], 5), cu(&[0, 1])]);
    let e = err_of(ts);
    assert!(e.contains("more than"), "{e}");
}

#[test]
fn expected_outputs_of_the_wrong_shape_are_errors() {
    let mut ts = valid();
    ts.push(f32t("expected_o", &[8, 2, 2], 1));
    assert!(err_of(ts).contains("`expected_o` has shape [8, 2, 2], expected [8, 2, 3]"));
    let mut ts = valid();
    ts.push(f32t("expected_o", &[8, 2, 3], 1));
    ts.push(f32t("expected_final_state", &[2, 2, 4, 2], 1));
    assert!(err_of(ts).contains("`expected_final_state`"));
}

#[cfg(feature = "cpu")]
mod cli {
    use super::*;
    use std::process::Command;

    /// Runs `deltanet replay` on `bytes` with `args`: (exit success, stdout + stderr).
    fn replay(bytes: &[u8], args: &[&str]) -> (bool, String) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("deltanet-hostile-{}-{k}.safetensors", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_deltanet")).arg("replay").arg(&path).args(args).output().unwrap();
        std::fs::remove_file(&path).unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn with_value(name: &str, index: usize, value: f32) -> Vec<T> {
        set(valid(), name, index, value)
    }

    fn set(mut ts: Vec<T>, name: &str, index: usize, value: f32) -> Vec<T> {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        let mut vals = DType::F32.decode_vec(&t.bytes);
        vals[index] = value;
        t.bytes = DType::F32.encode_vec(&vals);
        ts
    }

    #[test]
    fn non_finite_results_fail() {
        let (ok, out) = replay(&file(&valid(), &[]), &[]);
        assert!(ok, "the valid file passes: {out}");
        let mut nan_state = valid();
        nan_state.push(f32t("initial_state", &[2, 2, 4, 3], 9));
        let mut vals = DType::F32.decode_vec(&nan_state[6].bytes);
        vals[5] = f32::NAN;
        nan_state[6].bytes = DType::F32.encode_vec(&vals);
        let cases = [
            ("q with a NaN", file(&with_value("q", 13, f32::NAN), &[])),
            ("scale nan", file(&valid(), &[("scale", "nan")])),
            ("scale inf", file(&valid(), &[("scale", "inf")])),
            ("g = +30", file(&(0..16).fold(valid(), |ts, i| set(ts, "g", i, 30.0)), &[])),
            ("NaN initial state", file(&nan_state, &[])),
        ];
        for (name, bytes) in cases {
            let (ok, out) = replay(&bytes, &[]);
            assert!(!ok && out.contains("CHECK FAILED"), "{name}: {out}");
            assert!(!out.contains("panicked"), "{name}: {out}");
        }
    }

    #[test]
    fn hostile_files_and_arguments_are_clear_errors() {
        let big = 1usize << 17;
        for (name, bytes) in [
            ("K = 2^63", layer_file(2, 12, "9223372036854775808", "4")),
            ("V = 2^63", layer_file(2, 12, "4", "9223372036854775808")),
            ("K = V = 2^17", layer_file(1, 3 * big, &big.to_string(), &big.to_string())),
        ] {
            let (ok, out) = replay(&bytes, &[]);
            assert!(!ok && out.starts_with("error: ") && out.contains("replay file"), "{name}: {out}");
            assert!(!out.contains("panicked"), "{name}: {out}");
        }
        for tol in ["nan", "inf", "-1"] {
            let (ok, out) = replay(&file(&valid(), &[]), &[&format!("--tolerance={tol}")]);
            assert!(!ok && out.contains("error: --tolerance"), "{tol}: {out}");
        }
    }
}
