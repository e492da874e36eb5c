//! The layer-level C client (tests/c/layer.c): gate, conv extend / update /
//! verify, and the layer forward (two prefill chunks, then decode) through the
//! C ABI on layer 1 of a two-layer pool, compared with the f64 oracle (conv,
//! gate, delta rule composed here) on fresh random weights and inputs.

mod common;

use deltanet_conformance::{LayerInputs, LayerParams};
use facade::oracle::{causal_conv1d, gate, gated_delta_rule};
use facade::{DType, DeltaParams, ModelDims};
use std::path::Path;

/// The layer's oracle over the first `n` tokens from zero state: outputs,
/// final recurrent state, final conv state.
fn layer_oracle(dims: &ModelDims, w: &LayerParams, x: &LayerInputs, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (hk, k, c, hv) = (dims.num_k_heads, dims.head_k_dim, dims.conv_dim(), dims.num_v_heads);
    let cu = [0, n];
    let conv = causal_conv1d(&x.mixed_qkv[..n * c], &w.conv_weight, Some(&w.conv_bias), c, dims.conv_width, &cu, None);
    let (mut q, mut kk, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for row in conv.out.chunks_exact(c) {
        q.extend(row[..hk * k].iter().map(|&x| x as f32));
        kk.extend(row[hk * k..2 * hk * k].iter().map(|&x| x as f32));
        v.extend(row[2 * hk * k..].iter().map(|&x| x as f32));
    }
    let (g, beta) = gate(&x.a[..n * hv], &x.b[..n * hv], &w.a_log, &w.dt_bias);
    let (g, beta): (Vec<f32>, Vec<f32>) = (g.iter().map(|&x| x as f32).collect(), beta.iter().map(|&x| x as f32).collect());
    let out = gated_delta_rule(dims, &DeltaParams::new(dims), &q, &kk, &v, &g, &beta, &cu, None);
    (out.o, out.final_state, conv.conv_state)
}

#[test]
fn c_layer_client_matches_the_oracle() {
    let seed = common::fresh_seed();
    let dims = ModelDims::new(1, 2, 8, 6, 4).unwrap(); // must match HK, HV, KD, VD, W in layer.c
    let c = dims.conv_dim();
    let w = LayerParams::random(&dims, seed);
    let x = LayerInputs::random(&dims, 40, DType::F32, seed ^ 0x1a7e);

    let dir = common::scratch("layer");
    let (inputs, outputs, exe) = (dir.join("inputs.bin"), dir.join("outputs.bin"), dir.join("layer"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&inputs).unwrap());
    for a in [&w.a_log, &w.dt_bias, &w.conv_weight, &w.conv_bias, &x.mixed_qkv, &x.a, &x.b] {
        common::write_record(&mut f, a);
    }
    f.into_inner().unwrap().sync_all().unwrap();
    common::compile(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/layer.c"), &exe, false, &[]);
    let log = common::run(&exe, &[&inputs, &outputs]);
    assert!(log.contains("layer client: ok"), "{log}");
    let out = common::read_records(&outputs);
    assert_eq!(out.len(), 8, "records written by the C client");

    let (g, beta) = gate(&x.a, &x.b, &w.a_log, &w.dt_bias);
    common::check("gate g", &out[0], &g, seed);
    common::check("gate beta", &out[1], &beta, seed);

    // Conv: extend 30 tokens + update 1 continue one sequence; the chain
    // verify of 2 more continues it too but leaves the slot's conv state at 31.
    let conv33 = causal_conv1d(&x.mixed_qkv[..33 * c], &w.conv_weight, Some(&w.conv_bias), c, dims.conv_width, &[0, 33], None);
    let conv31 = causal_conv1d(&x.mixed_qkv[..31 * c], &w.conv_weight, Some(&w.conv_bias), c, dims.conv_width, &[0, 31], None);
    common::check("conv extend + update + verify", &out[2], &conv33.out, seed);
    let state_len = 2 * dims.state_elems();
    assert!(out[3].len() == state_len && out[3].iter().all(|&v| v == 0.0), "conv calls wrote the recurrent state (seed {seed})");
    let zeros = vec![0.0; dims.conv_elems()];
    common::check("conv slot: conv state after 31 tokens (layer 1)", &out[4], &[zeros.clone(), conv31.conv_state].concat(), seed);

    // Layer forward over 36 tokens in three calls.
    let (o, state, conv_state) = layer_oracle(&dims, &w, &x, 36);
    common::check("layer forward outputs (20 + 15 prefill, 1 decode)", &out[5], &o, seed);
    let half = state_len / 2;
    common::check("layer forward: recurrent state (layer 1)", &out[6][half..], &state, seed);
    assert!(out[6][..half].iter().all(|&v| v == 0.0), "layer 0 was written (seed {seed})");
    common::check("layer forward: conv state (layer 1)", &out[7], &[zeros, conv_state].concat(), seed);
    std::fs::remove_dir_all(&dir).ok();
}
