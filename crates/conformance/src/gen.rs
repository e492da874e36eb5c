//! Random inputs for the suite (host f32 values, already rounded to the dtype
//! the kernel will see) and the oracle runs that go with them.

use deltanet_core::oracle;
use deltanet_core::{DType, DeltaParams, LayerInput, LayerWeights, ModelDims, Result, TensorRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mixes seed parts into one seed (splitmix64 over the parts).
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &p in parts {
        h ^= p.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(h << 6).wrapping_add(h >> 2);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}

pub(crate) fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub(crate) fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32, dtype: DType) -> Vec<f32> {
    (0..n).map(|_| dtype.round(rng.gen_range(lo..hi))).collect()
}

/// Token-major inputs of the raw delta rule: `q, k: [T, HK, K]`, `v: [T, HV, V]`, `g, beta: [T, HV]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaInputs {
    /// Dims.
    pub dims: ModelDims,
    /// Tokens T.
    pub tokens: usize,
    /// `[T, HK, K]`.
    pub q: Vec<f32>,
    /// `[T, HK, K]`.
    pub k: Vec<f32>,
    /// `[T, HV, V]`.
    pub v: Vec<f32>,
    /// `[T, HV]`, f32, in `[-0.3, -0.005]`.
    pub g: Vec<f32>,
    /// `[T, HV]`, f32, in `[0.05, 0.95]`.
    pub beta: Vec<f32>,
}

impl DeltaInputs {
    /// Random inputs; q, k, v rounded to `dtype` (g and beta stay f32).
    pub fn random(dims: &ModelDims, tokens: usize, dtype: DType, seed: u64) -> Self {
        let mut r = rng(seed);
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        DeltaInputs {
            dims: *dims,
            tokens,
            q: uniform(&mut r, tokens * hk * k, -1.0, 1.0, dtype),
            k: uniform(&mut r, tokens * hk * k, -1.0, 1.0, dtype),
            v: uniform(&mut r, tokens * hv * v, -1.0, 1.0, dtype),
            g: uniform(&mut r, tokens * hv, -0.3, -0.005, DType::F32),
            beta: uniform(&mut r, tokens * hv, 0.05, 0.95, DType::F32),
        }
    }

    /// The tokens at `idx`, in that order.
    pub fn gather(&self, idx: &[usize]) -> Self {
        let d = &self.dims;
        let pick = |x: &[f32], per: usize| idx.iter().flat_map(|&t| x[t * per..(t + 1) * per].iter().copied()).collect::<Vec<_>>();
        let qk = d.num_k_heads * d.head_k_dim;
        DeltaInputs {
            dims: *d,
            tokens: idx.len(),
            q: pick(&self.q, qk),
            k: pick(&self.k, qk),
            v: pick(&self.v, d.num_v_heads * d.head_v_dim),
            g: pick(&self.g, d.num_v_heads),
            beta: pick(&self.beta, d.num_v_heads),
        }
    }

    /// Tokens `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        self.gather(&range.collect::<Vec<_>>())
    }

    /// The oracle over packed sequences from `init` (`[N, HV, K, V]`, K-major).
    pub fn oracle(&self, params: &DeltaParams, cu_seqlens: &[usize], init: Option<&[f32]>) -> oracle::OracleOutput {
        oracle::gated_delta_rule(&self.dims, params, &self.q, &self.k, &self.v, &self.g, &self.beta, cu_seqlens, init)
    }
}

/// A layer's weights, random: `A_log, dt_bias: [HV]`, conv weight `[conv_dim, W]`, bias `[conv_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerParams {
    /// `[HV]`.
    pub a_log: Vec<f32>,
    /// `[HV]`.
    pub dt_bias: Vec<f32>,
    /// `[conv_dim, W]`.
    pub conv_weight: Vec<f32>,
    /// `[conv_dim]`.
    pub conv_bias: Vec<f32>,
}

impl LayerParams {
    /// Random weights of Qwen3-Next-like magnitudes.
    pub fn random(dims: &ModelDims, seed: u64) -> Self {
        let mut r = rng(seed);
        let (hv, c, w) = (dims.num_v_heads, dims.conv_dim(), dims.conv_width);
        LayerParams {
            a_log: uniform(&mut r, hv, -3.0, 0.5, DType::F32),
            dt_bias: uniform(&mut r, hv, -1.0, 1.0, DType::F32),
            conv_weight: uniform(&mut r, c * w, -0.6, 0.6, DType::F32),
            conv_bias: uniform(&mut r, c, -0.2, 0.2, DType::F32),
        }
    }

    /// Host f32 views of the weights, as the layer forward and the layer oracle take them.
    pub fn weights(&self, dims: &ModelDims) -> Result<LayerWeights<'_>> {
        let (hv, c) = (dims.num_v_heads, dims.conv_dim());
        Ok(LayerWeights {
            a_log: TensorRef::from_slice(&self.a_log, &[hv])?,
            dt_bias: TensorRef::from_slice(&self.dt_bias, &[hv])?,
            conv_weight: TensorRef::from_slice(&self.conv_weight, &[c, dims.conv_width])?,
            conv_bias: Some(TensorRef::from_slice(&self.conv_bias, &[c])?),
        })
    }
}

/// A layer's per-token inputs: `mixed_qkv: [T, conv_dim]`, `a, b: [T, HV]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInputs {
    /// Dims.
    pub dims: ModelDims,
    /// Tokens T.
    pub tokens: usize,
    /// `[T, conv_dim]`.
    pub mixed_qkv: Vec<f32>,
    /// `[T, HV]`.
    pub a: Vec<f32>,
    /// `[T, HV]`.
    pub b: Vec<f32>,
}

/// Oracle results of a layer run over packed sequences.
#[derive(Debug, Clone)]
pub(crate) struct LayerOracle {
    pub o: Vec<f64>,
    pub state: Vec<f64>,
    pub conv_state: Vec<f64>,
}

impl LayerInputs {
    /// Random inputs rounded to `dtype`.
    pub fn random(dims: &ModelDims, tokens: usize, dtype: DType, seed: u64) -> Self {
        let mut r = rng(seed);
        let hv = dims.num_v_heads;
        LayerInputs {
            dims: *dims,
            tokens,
            mixed_qkv: uniform(&mut r, tokens * dims.conv_dim(), -1.5, 1.5, dtype),
            a: uniform(&mut r, tokens * hv, -2.0, 2.0, dtype),
            b: uniform(&mut r, tokens * hv, -2.0, 2.0, dtype),
        }
    }

    /// Host views of the inputs, as the layer forward and the layer oracle take them.
    pub fn input(&self) -> Result<LayerInput<'_>> {
        let (t, hv) = (self.tokens, self.dims.num_v_heads);
        Ok(LayerInput {
            mixed_qkv: TensorRef::from_slice(&self.mixed_qkv, &[t, self.dims.conv_dim()])?,
            a: TensorRef::from_slice(&self.a, &[t, hv])?,
            b: TensorRef::from_slice(&self.b, &[t, hv])?,
        })
    }

    /// The tokens at `idx`, in that order.
    pub fn gather(&self, idx: &[usize]) -> Self {
        let pick = |x: &[f32], per: usize| idx.iter().flat_map(|&t| x[t * per..(t + 1) * per].iter().copied()).collect::<Vec<_>>();
        LayerInputs {
            dims: self.dims,
            tokens: idx.len(),
            mixed_qkv: pick(&self.mixed_qkv, self.dims.conv_dim()),
            a: pick(&self.a, self.dims.num_v_heads),
            b: pick(&self.b, self.dims.num_v_heads),
        }
    }

    /// Tokens `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        self.gather(&range.collect::<Vec<_>>())
    }

    /// The oracle: conv (from `conv_state`, `[N, conv_dim, W-1]`) → gate → delta rule (from `state`).
    pub(crate) fn oracle(&self, w: &LayerParams, params: &DeltaParams, cu: &[usize], conv_state: &[f32], state: &[f32]) -> LayerOracle {
        let d = &self.dims;
        let (hk, k, c) = (d.num_k_heads, d.head_k_dim, d.conv_dim());
        let conv = oracle::causal_conv1d(&self.mixed_qkv, &w.conv_weight, Some(&w.conv_bias), c, d.conv_width, cu, Some(conv_state));
        let t = self.tokens;
        let (mut q, mut kk, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..t {
            let row = &conv.out[i * c..(i + 1) * c];
            q.extend(row[..hk * k].iter().map(|&x| x as f32));
            kk.extend(row[hk * k..2 * hk * k].iter().map(|&x| x as f32));
            v.extend(row[2 * hk * k..].iter().map(|&x| x as f32));
        }
        let (g, beta) = oracle::gate(&self.a, &self.b, &w.a_log, &w.dt_bias);
        let g: Vec<f32> = g.iter().map(|&x| x as f32).collect();
        let beta: Vec<f32> = beta.iter().map(|&x| x as f32).collect();
        let out = oracle::gated_delta_rule(d, params, &q, &kk, &v, &g, &beta, cu, Some(state));
        LayerOracle { o: out.o, state: out.final_state, conv_state: conv.conv_state }
    }
}

/// `[0, l0, l0+l1, ...]`.
pub(crate) fn cu_from_lens(lens: &[usize]) -> Vec<usize> {
    let mut cu = vec![0];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    cu
}

/// Compares bitwise; returns the number of differing elements.
pub(crate) fn bit_diff(a: &[f32], b: &[f32]) -> usize {
    if a.len() != b.len() {
        return a.len().max(b.len());
    }
    a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count()
}

pub(crate) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
