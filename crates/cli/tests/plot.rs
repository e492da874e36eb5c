//! `--plot` charts: each is written as a valid PNG (decoded here with the
//! `png` crate, CRCs checked) of the chart's pixel size, with its marks drawn,
//! and an unwritable path is an error, not a panic.

use deltanet_cli::plot;
use std::path::{Path, PathBuf};

#[cfg_attr(not(feature = "cpu"), allow(dead_code))]
fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("deltanet-plot-{}-{name}.png", std::process::id()))
}

/// Decodes `path` and returns (width, height, RGB pixels).
#[cfg_attr(not(feature = "cpu"), allow(dead_code))]
fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    let px = buf[..info.buffer_size()].chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    (info.width, info.height, px)
}

#[cfg_attr(not(feature = "cpu"), allow(dead_code))]
fn count(px: &[[u8; 3]], f: impl Fn(&[u8; 3]) -> bool) -> usize {
    px.iter().filter(|p| f(p)).count()
}

#[cfg(feature = "cpu")]
#[test]
fn bench_chart_is_a_png_of_its_size_with_points_and_bars() {
    use deltanet::DType;
    use deltanet_cli::bench::*;
    let dims = qwen35_35b_dims();
    // figures of the shape a real run gives (this checks drawing, not speed)
    let extend = [512, 4096]
        .map(|t| ExtendResult { tokens: t, threads: 2, secs: 0.1, tokens_per_s: 1.5e4, gflops: 60.0, gemm_gflops: 80.0 })
        .to_vec();
    let dec = [(1, DType::F32), (1, DType::BF16), (8, DType::F32), (8, DType::BF16)]
        .map(|(batch, state)| DecodeResult {
            batch,
            state,
            layers: 40,
            secs_per_step: 1e-3,
            tokens_per_s: batch as f64 * 1e3,
            gbps: 8.0,
            rmw_gbps: 20.0,
        })
        .to_vec();
    let layer = [LayerStep::Extend { seqs: 4, tokens: 128 }, LayerStep::Decode { batch: 8 }, LayerStep::Verify { batch: 1, draft: 4 }]
        .map(|step| LayerResult { step, threads: 2, layers: 10, secs: 1e-2, conv_secs: 1e-3, gate_secs: 2e-4, delta_secs: 7e-3 })
        .to_vec();
    let rep = Report {
        threads: 2,
        dims,
        gemm: GemmCeiling { n: 2048, threads: 2, gflops: 80.0 },
        extend,
        decode: dec,
        verify: vec![],
        spec: vec![],
        chunked: None,
        layer,
        short_vs_long: None,
        mixed: None,
    };
    let path = tmp("bench");
    plot::roofline::write(&rep, &path).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), plot::roofline::SIZE);
    // extend points (blue), f32 decode points and conv bars (red), bf16 points (green), text (dark)
    assert!(count(&px, |p| *p == [0, 0, 255]) > 500, "blue extend points and delta-rule bars");
    assert!(count(&px, |p| *p == [255, 0, 0]) > 200, "red f32 decode points and conv bars");
    assert!(count(&px, |p| *p == [0, 255, 0]) > 50, "green bf16 decode points");
    assert!(count(&px, |p| p.iter().all(|&c| c < 100)) > 2000, "axes, ceilings and labels");
    std::fs::remove_file(path).unwrap();
}

#[cfg(feature = "cpu")]
#[test]
fn replay_chart_is_a_png_of_its_size_with_the_splits_marked() {
    use deltanet_cli::replay::{self, ReplayFile};
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/gdn_f32_varlen.safetensors");
    let mut f = ReplayFile::parse(&std::fs::read(golden).unwrap()).unwrap();
    let longest = f.cu_seqlens.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(longest > 64, "the golden file has a sequence longer than one chunk");
    f.chunk_splits = vec![longest / 2];
    let backend = deltanet::Backend::from_name("cpu").unwrap();
    let out = replay::run(&backend, &f).unwrap();
    let rep = replay::report(&f, &out);
    assert_eq!(rep.per_token.iter().map(Vec::len).sum::<usize>(), f.tokens());
    let path = tmp("replay");
    plot::replay_errors::write(&f, &rep, deltanet::tolerance::REFERENCE, backend.name(), &path).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), plot::replay_errors::SIZE);
    assert!(count(&px, |p| *p == [255, 0, 0]) > 200, "red split markers");
    assert!(count(&px, |p| *p == [0, 0, 255]) > 200, "blue per-token line");
    assert!(count(&px, |p| p.iter().all(|&c| c < 100)) > 2000, "axes, tolerance line and labels");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn an_unwritable_path_is_an_error() {
    use deltanet_cli::replay::{ReplayFile, ReplayReport};
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/gdn_f32_varlen.safetensors");
    let f = ReplayFile::parse(&std::fs::read(golden).unwrap()).unwrap();
    let n = f.cu_seqlens.len() - 1;
    let rep = ReplayReport {
        o_ratio: 1e-6,
        state_ratio: 1e-6,
        conv_ratio: None,
        per_seq: vec![(1e-6, 1e-6); n],
        per_head: vec![1e-6; f.dims.num_v_heads],
        per_chunk: vec![vec![1e-6]; n],
        per_token: f.cu_seqlens.windows(2).map(|w| vec![1e-6; w[1] - w[0]]).collect(),
        first_jump: None,
        vs_expected: None,
    };
    let path = std::env::temp_dir().join("deltanet-no-such-dir").join("x").join("chart.png");
    let e = plot::replay_errors::write(&f, &rep, 1e-3, "cpu", &path).unwrap_err();
    assert!(e.to_string().contains("chart.png"), "{e}");
}
