//! deltanet's f64 oracle (`deltanet_core::oracle`), exposed for tests: the
//! naive recurrence, the gate and the causal conv in plain f64 loops. Results
//! come back as little-endian f64 `bytes` (`numpy.frombuffer(b, numpy.float64)`).

use crate::errors::guard;
use crate::tensor::{borrow, borrow_opt};
use deltanet::{oracle, DeltaParams, ModelDims};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

fn f64_bytes<'py>(py: Python<'py>, v: &[f64]) -> Bound<'py, PyBytes> {
    let mut out = Vec::with_capacity(v.len() * 8);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    PyBytes::new(py, &out)
}

/// The gated delta rule in f64: packed `q, k [T, HK, K]`, `v [T, HV, V]`,
/// `g, beta [T, HV]`, `initial_state [N, HV, K, V]` (K-major) or None.
/// Returns `(o [T, HV, V], final_state [N, HV, K, V])` as f64 bytes.
#[pyfunction]
#[pyo3(signature = (q, k, v, g, beta, cu_seqlens, initial_state=None, scale=None, use_qk_l2norm=false))]
#[allow(clippy::too_many_arguments)]
pub fn oracle_gated_delta_rule<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    g: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    cu_seqlens: Vec<usize>,
    initial_state: Option<&Bound<'py, PyAny>>,
    scale: Option<f32>,
    use_qk_l2norm: bool,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    guard(|| {
        let (q, k, v, g, beta) =
            (borrow("q", q, false)?, borrow("k", k, false)?, borrow("v", v, false)?, borrow("g", g, false)?, borrow("beta", beta, false)?);
        let h0 = borrow_opt("initial_state", initial_state, false)?;
        let (hk, kd, hv, vd) = (q.shape()[1], q.shape()[2], v.shape()[1], v.shape()[2]);
        let dims = ModelDims::new(hk, hv, kd, vd, 2).map_err(crate::errors::to_py)?;
        deltanet::batch::validate_cu_seqlens(&cu_seqlens).map_err(crate::errors::to_py)?;
        let params = DeltaParams { scale: scale.unwrap_or((kd as f32).powf(-0.5)), use_qk_l2norm };
        let h0v = h0.as_ref().map(|h| h.to_f32()).transpose()?;
        let out = oracle::gated_delta_rule(
            &dims,
            &params,
            &q.to_f32()?,
            &k.to_f32()?,
            &v.to_f32()?,
            &g.to_f32()?,
            &beta.to_f32()?,
            &cu_seqlens,
            h0v.as_deref(),
        );
        Ok((f64_bytes(py, &out.o), f64_bytes(py, &out.final_state)))
    })
}

/// The gate in f64: `g = -exp(A_log) * softplus(a + dt_bias)`, `beta = sigmoid(b)` over `[T, HV]`.
#[pyfunction]
pub fn oracle_gate<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    a_log: &Bound<'py, PyAny>,
    dt_bias: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    guard(|| {
        let (a, b, al, dt) =
            (borrow("a", a, false)?, borrow("b", b, false)?, borrow("A_log", a_log, false)?, borrow("dt_bias", dt_bias, false)?);
        let (g, beta) = oracle::gate(&a.to_f32()?, &b.to_f32()?, &al.to_f32()?, &dt.to_f32()?);
        Ok((f64_bytes(py, &g), f64_bytes(py, &beta)))
    })
}

/// Causal conv1d + SiLU in f64: `x [T, dim]` packed, `weight [dim, W]`, `conv_state [N, dim, W-1]` or None.
/// Returns `(out [T, dim], conv_state [N, dim, W-1])` as f64 bytes.
#[pyfunction]
#[pyo3(signature = (x, weight, bias, cu_seqlens, conv_state=None))]
pub fn oracle_causal_conv1d<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    cu_seqlens: Vec<usize>,
    conv_state: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    guard(|| {
        let (x, w) = (borrow("x", x, false)?, borrow("weight", weight, false)?);
        let bias = borrow_opt("bias", bias, false)?.map(|b| b.to_f32()).transpose()?;
        let st = borrow_opt("conv_state", conv_state, false)?.map(|b| b.to_f32()).transpose()?;
        deltanet::batch::validate_cu_seqlens(&cu_seqlens).map_err(crate::errors::to_py)?;
        let (dim, width) = (w.shape()[0], w.shape()[1]);
        let out = oracle::causal_conv1d(&x.to_f32()?, &w.to_f32()?, bias.as_deref(), dim, width, &cu_seqlens, st.as_deref());
        Ok((f64_bytes(py, &out.out), f64_bytes(py, &out.conv_state)))
    })
}
