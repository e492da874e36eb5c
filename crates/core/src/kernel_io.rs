//! The tensors of each kernel ([`GateIo`], [`ConvIo`], [`DeltaIo`]) and their
//! validation against a backend's [`Capabilities`]: shared, so every backend
//! rejects bad input with the same typed error, in the same order.

use crate::capabilities::Capabilities;
use crate::dims::{DeltaParams, ModelDims};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{TensorMut, TensorRef};

const F32: &[DType] = &[DType::F32];

/// Tensors of the gate: `g = -exp(A_log) * softplus(a + dt_bias)`, `beta = sigmoid(b)`.
#[derive(Debug)]
pub struct GateIo<'a> {
    /// `[T, HV]`.
    pub a: TensorRef<'a>,
    /// `[T, HV]`.
    pub b: TensorRef<'a>,
    /// `[HV]`, f32.
    pub a_log: TensorRef<'a>,
    /// `[HV]`, f32.
    pub dt_bias: TensorRef<'a>,
    /// Output `[T, HV]`, f32.
    pub g: TensorMut<'a>,
    /// Output `[T, HV]`, f32.
    pub beta: TensorMut<'a>,
}

impl GateIo<'_> {
    /// Tokens T, from `a`'s leading dimension (0 for a tensor of rank 0).
    pub fn tokens(&self) -> usize {
        self.a.meta().shape().first().copied().unwrap_or(0)
    }

    /// Checks every tensor against `dims`, `tokens` and `caps`.
    pub fn validate(&self, caps: &Capabilities, dims: &ModelDims, tokens: usize) -> Result<()> {
        let (dev, hv) = (caps.device, dims.num_v_heads);
        self.a.meta().expect("a", dev, &caps.input_dtypes, &[tokens, hv])?;
        self.b.meta().expect("b", dev, &caps.input_dtypes, &[tokens, hv])?;
        self.a_log.meta().expect("A_log", dev, F32, &[hv])?;
        self.dt_bias.meta().expect("dt_bias", dev, F32, &[hv])?;
        self.g.meta().expect_output("g", dev, F32, &[tokens, hv])?;
        self.beta.meta().expect_output("beta", dev, F32, &[tokens, hv])
    }
}

/// Tensors of the short convolution (SiLU applied to the output).
#[derive(Debug)]
pub struct ConvIo<'a> {
    /// Raw inputs `[T, conv_dim]`.
    pub x: TensorRef<'a>,
    /// Depthwise weights `[conv_dim, W]`, f32.
    pub weight: TensorRef<'a>,
    /// Optional bias `[conv_dim]`, f32.
    pub bias: Option<TensorRef<'a>>,
    /// Output `[T, conv_dim]`.
    pub out: TensorMut<'a>,
}

impl ConvIo<'_> {
    /// Checks every tensor against `dims`, `tokens` and `caps`.
    pub fn validate(&self, caps: &Capabilities, dims: &ModelDims, tokens: usize) -> Result<()> {
        let (dev, c) = (caps.device, dims.conv_dim());
        self.x.meta().expect("x", dev, &caps.input_dtypes, &[tokens, c])?;
        self.weight.meta().expect("conv_weight", dev, F32, &[c, dims.conv_width])?;
        if let Some(b) = &self.bias {
            b.meta().expect("conv_bias", dev, F32, &[c])?;
        }
        self.out.meta().expect_output("conv_out", dev, &caps.input_dtypes, &[tokens, c])
    }
}

/// Tensors of the delta rule.
#[derive(Debug)]
pub struct DeltaIo<'a> {
    /// `[T, HK, K]`.
    pub q: TensorRef<'a>,
    /// `[T, HK, K]`.
    pub k: TensorRef<'a>,
    /// `[T, HV, V]`.
    pub v: TensorRef<'a>,
    /// `[T, HV]`, f32, natural-log decay (<= 0).
    pub g: TensorRef<'a>,
    /// `[T, HV]`.
    pub beta: TensorRef<'a>,
    /// Output `[T, HV, V]`.
    pub o: TensorMut<'a>,
    /// Scale and L2 norm.
    pub params: DeltaParams,
}

impl DeltaIo<'_> {
    /// Checks every tensor against `dims`, `tokens` and `caps`.
    pub fn validate(&self, caps: &Capabilities, dims: &ModelDims, tokens: usize) -> Result<()> {
        let dev = caps.device;
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        // beta may be f32 (the gate's output) or any input dtype
        let beta_dtypes = if self.beta.meta().dtype() == DType::F32 { F32 } else { &caps.input_dtypes };
        self.q.meta().expect("q", dev, &caps.input_dtypes, &[tokens, hk, k])?;
        self.k.meta().expect("k", dev, &caps.input_dtypes, &[tokens, hk, k])?;
        self.v.meta().expect("v", dev, &caps.input_dtypes, &[tokens, hv, v])?;
        self.g.meta().expect("g", dev, F32, &[tokens, hv])?;
        self.beta.meta().expect("beta", dev, beta_dtypes, &[tokens, hv])?;
        self.o.meta().expect_output("o", dev, &caps.input_dtypes, &[tokens, hv, v])
    }
}
