//! Deterministic synthetic layer inputs: every token is a 64-bit key, and a
//! (layer, key) pair always produces the same projections, so the oracle can
//! replay any request's history without storing it.

use deltanet_core::ModelDims;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mixes integers into one well-spread key (splitmix64 steps).
pub fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &p in parts {
        h ^= p.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(h << 6).wrapping_add(h >> 2);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}

/// One layer's weights, drawn from the run seed.
#[derive(Debug, Clone)]
pub struct SynthWeights {
    /// `[HV]`: chosen so that exp(g) stays in about (0.6, 1).
    pub a_log: Vec<f32>,
    /// `[HV]`.
    pub dt_bias: Vec<f32>,
    /// `[conv_dim, W]`.
    pub conv_weight: Vec<f32>,
}

impl SynthWeights {
    /// Weights of `layer` for `seed`.
    pub fn new(dims: &ModelDims, seed: u64, layer: usize) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(mix(&[seed, 0x5eed, layer as u64]));
        let hv = dims.num_v_heads;
        SynthWeights {
            a_log: (0..hv).map(|_| r.gen_range(-3.0..-1.0)).collect(),
            dt_bias: (0..hv).map(|_| r.gen_range(-0.5..0.5)).collect(),
            conv_weight: (0..dims.conv_dim() * dims.conv_width).map(|_| r.gen_range(-0.6..0.6)).collect(),
        }
    }
}

/// Appends the projections of token `key` in `layer` to the three row buffers:
/// `mixed_qkv` (conv_dim values), `a` and `b` (HV values each).
pub fn token_inputs(dims: &ModelDims, seed: u64, layer: usize, key: u64, qkv: &mut Vec<f32>, a: &mut Vec<f32>, b: &mut Vec<f32>) {
    let mut r = ChaCha8Rng::seed_from_u64(mix(&[seed, layer as u64, key]));
    qkv.extend((0..dims.conv_dim()).map(|_| r.gen_range(-1.0f32..1.0)));
    a.extend((0..dims.num_v_heads).map(|_| r.gen_range(-1.0f32..1.0)));
    b.extend((0..dims.num_v_heads).map(|_| r.gen_range(-2.0f32..2.0)));
}

/// The projections of a list of tokens, packed `[T, ...]`.
pub fn inputs_for(dims: &ModelDims, seed: u64, layer: usize, keys: &[u64]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut q, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for &k in keys {
        token_inputs(dims, seed, layer, k, &mut q, &mut a, &mut b);
    }
    (q, a, b)
}

/// The f64 oracle of one whole GDN layer (conv from zero state, gate, delta
/// rule from zero state) over one request's token history.
pub struct LayerOracle {
    /// `[T, HV, V]`.
    pub o: Vec<f64>,
    /// `[HV, K, V]`, canonical.
    pub state: Vec<f64>,
    /// `[conv_dim, W-1]`.
    pub conv_state: Vec<f64>,
}

/// Runs [`LayerOracle`] for `keys` in `layer`.
pub fn layer_oracle(dims: &ModelDims, seed: u64, layer: usize, keys: &[u64]) -> LayerOracle {
    use deltanet_core::oracle;
    let w = SynthWeights::new(dims, seed, layer);
    let (qkv, a, b) = inputs_for(dims, seed, layer, keys);
    let t = keys.len();
    let conv = oracle::causal_conv1d(&qkv, &w.conv_weight, None, dims.conv_dim(), dims.conv_width, &[0, t], None);
    let (g, beta) = oracle::gate(&a, &b, &w.a_log, &w.dt_bias);
    let (hk, kd, c) = (dims.num_k_heads, dims.head_k_dim, dims.conv_dim());
    let split =
        |lo: usize, hi: usize| -> Vec<f32> { (0..t).flat_map(|i| conv.out[i * c + lo..i * c + hi].iter().map(|&x| x as f32)).collect() };
    let (q, k, v) = (split(0, hk * kd), split(hk * kd, 2 * hk * kd), split(2 * hk * kd, c));
    let (g32, b32): (Vec<f32>, Vec<f32>) = (g.iter().map(|&x| x as f32).collect(), beta.iter().map(|&x| x as f32).collect());
    let out = oracle::gated_delta_rule(dims, &deltanet_core::DeltaParams::new(dims), &q, &k, &v, &g32, &b32, &[0, t], None);
    LayerOracle { o: out.o, state: out.final_state, conv_state: conv.conv_state }
}
