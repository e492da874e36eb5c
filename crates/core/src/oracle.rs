//! The f64 oracle: the naive recurrence of DESIGN §2, the gate and the causal
//! conv1d, in plain loops. Deliberately obvious; every test compares with it.
//! Inputs are f32 (already rounded to whatever dtype the kernel saw), all
//! arithmetic is f64. [`layer`] chains the pieces into what one layer step of
//! the layer forward computes, in f64 throughout.

use crate::dims::{DeltaParams, ModelDims};

pub mod layer;
pub use layer::{layer_decode, layer_extend, layer_verify, LayerOracleOutput, SlotState};

/// Outputs of [`gated_delta_rule`].
#[derive(Debug, Clone)]
pub struct OracleOutput {
    /// `[T, HV, V]`.
    pub o: Vec<f64>,
    /// `[N, HV, K, V]`, canonical K-major.
    pub final_state: Vec<f64>,
}

fn l2norm(x: &[f64]) -> Vec<f64> {
    let n = (x.iter().map(|v| v * v).sum::<f64>() + crate::dims::L2NORM_EPS as f64).sqrt();
    x.iter().map(|v| v / n).collect()
}

/// The gated delta rule, token by token, for packed sequences.
///
/// `q, k: [T, HK, K]`, `v: [T, HV, V]`, `g, beta: [T, HV]`, `initial_state:
/// [N, HV, K, V]` (K-major; `None` = zeros).
#[allow(clippy::too_many_arguments)]
pub fn gated_delta_rule(
    dims: &ModelDims,
    params: &DeltaParams,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    cu_seqlens: &[usize],
    initial_state: Option<&[f32]>,
) -> OracleOutput {
    delta_rule_of(dims, params, q, k, v, g, beta, cu_seqlens, initial_state)
}

/// [`gated_delta_rule`] over f32 or f64 inputs (the layer oracle passes f64).
#[allow(clippy::too_many_arguments)]
pub(crate) fn delta_rule_of<T: Copy + Into<f64>>(
    dims: &ModelDims,
    params: &DeltaParams,
    q: &[T],
    k: &[T],
    v: &[T],
    g: &[T],
    beta: &[T],
    cu_seqlens: &[usize],
    initial_state: Option<&[T]>,
) -> OracleOutput {
    let (hk, hv, kd, vd) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    let n = cu_seqlens.len() - 1;
    let t_all = cu_seqlens[n];
    let mut o = vec![0.0; t_all * hv * vd];
    let mut fin = vec![0.0; n * hv * kd * vd];
    let per = kd * vd;
    for s in 0..n {
        for h in 0..hv {
            let kh = dims.key_head(h);
            let mut st: Vec<f64> = match initial_state {
                Some(init) => init[(s * hv + h) * per..(s * hv + h + 1) * per].iter().map(|&x| x.into()).collect(),
                None => vec![0.0; per],
            };
            for t in cu_seqlens[s]..cu_seqlens[s + 1] {
                let qv: Vec<f64> = q[(t * hk + kh) * kd..(t * hk + kh + 1) * kd].iter().map(|&x| x.into()).collect();
                let kv: Vec<f64> = k[(t * hk + kh) * kd..(t * hk + kh + 1) * kd].iter().map(|&x| x.into()).collect();
                let (qv, kv) = if params.use_qk_l2norm { (l2norm(&qv), l2norm(&kv)) } else { (qv, kv) };
                let vv = &v[(t * hv + h) * vd..(t * hv + h + 1) * vd];
                let decay = g[t * hv + h].into().exp();
                let b: f64 = beta[t * hv + h].into();
                st.iter_mut().for_each(|x| *x *= decay);
                // u = beta * (v - S^T k)
                let mut u = vec![0.0; vd];
                for (j, uj) in u.iter_mut().enumerate() {
                    let mut sk = 0.0;
                    for i in 0..kd {
                        sk += st[i * vd + j] * kv[i];
                    }
                    *uj = b * (vv[j].into() - sk);
                }
                for i in 0..kd {
                    for j in 0..vd {
                        st[i * vd + j] += kv[i] * u[j];
                    }
                }
                for j in 0..vd {
                    let mut acc = 0.0;
                    for i in 0..kd {
                        acc += st[i * vd + j] * qv[i];
                    }
                    o[(t * hv + h) * vd + j] = params.scale as f64 * acc;
                }
            }
            fin[(s * hv + h) * per..(s * hv + h + 1) * per].copy_from_slice(&st);
        }
    }
    OracleOutput { o, final_state: fin }
}

/// `softplus` with the threshold 20 of torch: `x` itself above it.
pub fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// The gate: `g = -exp(A_log) * softplus(a + dt_bias)`, `beta = sigmoid(b)`, over `[T, HV]`.
pub fn gate(a: &[f32], b: &[f32], a_log: &[f32], dt_bias: &[f32]) -> (Vec<f64>, Vec<f64>) {
    gate_of(a, b, a_log, dt_bias)
}

/// [`gate`] over f32 or f64 inputs.
pub(crate) fn gate_of<T: Copy + Into<f64>>(a: &[T], b: &[T], a_log: &[T], dt_bias: &[T]) -> (Vec<f64>, Vec<f64>) {
    let hv = a_log.len();
    let g = a.iter().enumerate().map(|(i, &x)| -a_log[i % hv].into().exp() * softplus(x.into() + dt_bias[i % hv].into())).collect();
    let beta = b.iter().map(|&x| 1.0 / (1.0 + (-x.into()).exp())).collect();
    (g, beta)
}

/// Outputs of [`causal_conv1d`].
#[derive(Debug, Clone)]
pub struct ConvOutput {
    /// `[T, conv_dim]`, after SiLU.
    pub out: Vec<f64>,
    /// `[N, conv_dim, W-1]`: the last W-1 raw inputs of each sequence (channels-first).
    pub conv_state: Vec<f64>,
}

/// Depthwise causal conv1d + SiLU over packed sequences, each starting from its
/// conv state (`[N, conv_dim, W-1]`, oldest column first; `None` = zeros).
pub fn causal_conv1d(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    conv_dim: usize,
    width: usize,
    cu_seqlens: &[usize],
    conv_state: Option<&[f32]>,
) -> ConvOutput {
    causal_conv1d_of(x, weight, bias, conv_dim, width, cu_seqlens, conv_state)
}

/// [`causal_conv1d`] over f32 or f64 inputs.
pub(crate) fn causal_conv1d_of<T: Copy + Into<f64>>(
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    conv_dim: usize,
    width: usize,
    cu_seqlens: &[usize],
    conv_state: Option<&[T]>,
) -> ConvOutput {
    let n = cu_seqlens.len() - 1;
    let w1 = width - 1;
    let mut out = vec![0.0; cu_seqlens[n] * conv_dim];
    let mut new_state = vec![0.0; n * conv_dim * w1];
    for s in 0..n {
        for c in 0..conv_dim {
            // history = [state | inputs of this sequence]
            let mut hist: Vec<f64> = match conv_state {
                Some(st) => st[(s * conv_dim + c) * w1..(s * conv_dim + c + 1) * w1].iter().map(|&v| v.into()).collect(),
                None => vec![0.0; w1],
            };
            for t in cu_seqlens[s]..cu_seqlens[s + 1] {
                hist.push(x[t * conv_dim + c].into());
            }
            for (i, t) in (cu_seqlens[s]..cu_seqlens[s + 1]).enumerate() {
                let mut acc = bias.map_or(0.0, |b| b[c].into());
                for j in 0..width {
                    acc += weight[c * width + j].into() * hist[i + j];
                }
                out[t * conv_dim + c] = acc / (1.0 + (-acc).exp());
            }
            let tail = &hist[hist.len() - w1..];
            new_state[(s * conv_dim + c) * w1..(s * conv_dim + c + 1) * w1].copy_from_slice(tail);
        }
    }
    ConvOutput { out, conv_state: new_state }
}

/// The worse of two error ratios: NaN when either is NaN (`f64::max` would
/// drop it, and a NaN ratio must fail a check, never pass it).
pub fn worst_ratio(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Error as fla measures it: `rms(x - ref) / rms(ref)` (0 when both are 0).
pub fn error_ratio(x: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(x.len(), reference.len(), "error_ratio: length mismatch");
    let (mut num, mut den) = (0.0, 0.0);
    for (a, b) in x.iter().zip(reference) {
        num += (*a as f64 - b) * (*a as f64 - b);
        den += b * b;
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims1(k: usize, v: usize) -> ModelDims {
        ModelDims::new(1, 1, k, v, 4).unwrap()
    }

    #[test]
    fn one_token_by_hand() {
        // K = V = 2, no norm, scale 1, S0 = 0, g = 0, beta = 0.5:
        // u = 0.5 * v; S = k u^T; o = S^T q = u (k.q)
        let d = dims1(2, 2);
        let p = DeltaParams { scale: 1.0, use_qk_l2norm: false };
        let out = gated_delta_rule(&d, &p, &[1.0, 2.0], &[3.0, 4.0], &[10.0, 20.0], &[0.0], &[0.5], &[0, 1], None);
        // k.q = 11, u = [5, 10]
        assert_eq!(out.o, vec![55.0, 110.0]);
        assert_eq!(out.final_state, vec![15.0, 30.0, 20.0, 40.0]);
    }

    #[test]
    fn two_tokens_by_hand_with_decay_and_initial_state() {
        // K = V = 1: S scalar. S0 = 2, tokens (q,k,v,g,beta):
        // t0: (1, 1, 3, ln 0.5, 1) -> S = 1; u = 1*(3 - 1) = 2; S = 3; o = 3
        // t1: (2, 0.5, 1, 0, 0.5)  -> S = 3; u = 0.5*(1 - 1.5) = -0.25; S = 3 - 0.125 = 2.875; o = 5.75
        let d = dims1(1, 1);
        let p = DeltaParams { scale: 1.0, use_qk_l2norm: false };
        let g = [0.5f32.ln(), 0.0];
        let out = gated_delta_rule(&d, &p, &[1.0, 2.0], &[1.0, 0.5], &[3.0, 1.0], &g, &[1.0, 0.5], &[0, 2], Some(&[2.0]));
        assert!((out.o[0] - 3.0).abs() < 1e-6, "{:?}", out.o);
        assert!((out.o[1] - 5.75).abs() < 1e-6, "{:?}", out.o);
        assert!((out.final_state[0] - 2.875).abs() < 1e-6);
    }

    #[test]
    fn l2norm_and_scale() {
        // q = k = [3, 4] normalised to [0.6, 0.8] (eps negligible); beta 1, v = [1]:
        // u = 1; S = k; o = scale * k.q = scale * 1
        let d = dims1(2, 1);
        let p = DeltaParams { scale: 0.5, use_qk_l2norm: true };
        let out = gated_delta_rule(&d, &p, &[3.0, 4.0], &[3.0, 4.0], &[1.0], &[0.0], &[1.0], &[0, 1], None);
        assert!((out.o[0] - 0.5).abs() < 1e-7, "{:?}", out.o);
    }

    #[test]
    fn gate_by_hand() {
        let (g, beta) = gate(&[0.0, 30.0], &[0.0, 0.0], &[0.0, 0.0_f32], &[0.0, 0.0]);
        assert!((g[0] + 2f64.ln()).abs() < 1e-12); // -1 * softplus(0) = -ln 2
        assert_eq!(g[1], -30.0); // over the threshold softplus(x) = x
        assert_eq!(beta, vec![0.5, 0.5]);
    }

    #[test]
    fn conv_by_hand() {
        // one channel, W = 3 (state 2 columns), weights [1, 2, 3], state [4, 5]:
        // t0 input 6: 1*4 + 2*5 + 3*6 = 32; t1 input 7: 1*5 + 2*6 + 3*7 = 38
        let out = causal_conv1d(&[6.0, 7.0], &[1.0, 2.0, 3.0], None, 1, 3, &[0, 2], Some(&[4.0, 5.0]));
        let silu = |x: f64| x / (1.0 + (-x).exp());
        assert_eq!(out.out, vec![silu(32.0), silu(38.0)]);
        assert_eq!(out.conv_state, vec![6.0, 7.0]);
        // a 1-token sequence keeps the older state column
        let out = causal_conv1d(&[6.0], &[1.0, 2.0, 3.0], Some(&[1.0]), 1, 3, &[0, 1], Some(&[4.0, 5.0]));
        assert_eq!(out.out, vec![silu(33.0)]);
        assert_eq!(out.conv_state, vec![5.0, 6.0]);
    }
}
