//! The dispatcher contract every backend implements (DESIGN §4), the
//! capabilities it declares, and the validation of every operation's tensors
//! (shared, so every backend rejects bad input with the same typed error).

use crate::batch::{CommitBatch, DecodeBatch, ExtendBatch, VerifyBatch};
use crate::dims::{DeltaParams, ModelDims};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{ConvLayoutKind, LayoutKind, StateLayout};
use crate::memory::DeviceMemory;
use crate::pool::{PoolConfig, StatePool};
use crate::tensor::{Device, TensorMut, TensorRef};

/// What a backend supports. The pool refuses any configuration outside it at
/// construction, so an unsupported dtype never reaches a kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Capabilities {
    /// Backend name (`"cpu"`, `"cuda"`, `"npu"`...).
    pub backend: String,
    /// Device the kernels run on.
    pub device: Device,
    /// Recurrent layout of every state buffer.
    pub native_layout: LayoutKind,
    /// Conv-state layout.
    pub conv_layout: ConvLayoutKind,
    /// Recurrent-state dtypes.
    pub state_dtypes: Vec<DType>,
    /// Conv-state dtypes.
    pub conv_dtypes: Vec<DType>,
    /// Dtypes of q, k, v, beta, a, b, mixed_qkv and outputs.
    pub input_dtypes: Vec<DType>,
    /// Largest draft count D, if bounded.
    pub max_draft_tokens: Option<usize>,
    /// Largest K and V, if bounded.
    pub max_head_dim: Option<usize>,
    /// Chunk length of the chunked extend (64).
    pub chunk_size: usize,
}

impl Capabilities {
    /// Capabilities of a host backend with every dtype (tests and examples).
    pub fn host_reference(layout: LayoutKind) -> Self {
        Capabilities {
            backend: "host-reference".into(),
            device: Device::Host,
            native_layout: layout,
            conv_layout: ConvLayoutKind::ChannelsFirst,
            state_dtypes: vec![DType::F32, DType::BF16],
            conv_dtypes: vec![DType::F32, DType::BF16, DType::F16],
            input_dtypes: vec![DType::F32, DType::BF16, DType::F16],
            max_draft_tokens: None,
            max_head_dim: None,
            chunk_size: 64,
        }
    }

    /// Refuses a pool configuration this backend cannot run.
    pub fn check_pool_config(&self, cfg: &PoolConfig) -> Result<()> {
        crate::finite::check_pool_supports(self.device == Device::Host, cfg.check_finite, &self.backend)?;
        if !self.state_dtypes.contains(&cfg.state_dtype) {
            return Err(Error::UnsupportedDType { backend: self.backend.clone(), what: "recurrent state".into(), dtype: cfg.state_dtype });
        }
        if !self.conv_dtypes.contains(&cfg.conv_dtype) {
            return Err(Error::UnsupportedDType { backend: self.backend.clone(), what: "conv state".into(), dtype: cfg.conv_dtype });
        }
        if let (Some(max), Some(s)) = (self.max_draft_tokens, cfg.spec) {
            if s.draft_tokens > max {
                return Err(Error::Unsupported {
                    backend: self.backend.clone(),
                    reason: format!("{} draft tokens > {max}", s.draft_tokens),
                });
            }
        }
        if let Some(max) = self.max_head_dim {
            if cfg.dims.head_k_dim > max || cfg.dims.head_v_dim > max {
                return Err(Error::Unsupported {
                    backend: self.backend.clone(),
                    reason: format!("head dims K={} V={} > {max}", cfg.dims.head_k_dim, cfg.dims.head_v_dim),
                });
            }
        }
        Ok(())
    }
}

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
    /// Checks every tensor against `dims`, `tokens` and `caps`.
    pub fn validate(&self, caps: &Capabilities, dims: &ModelDims, tokens: usize) -> Result<()> {
        let (dev, hv, f32s) = (caps.device, dims.num_v_heads, &[DType::F32][..]);
        self.a.meta().expect("a", dev, &caps.input_dtypes, &[tokens, hv])?;
        self.b.meta().expect("b", dev, &caps.input_dtypes, &[tokens, hv])?;
        self.a_log.meta().expect("A_log", dev, f32s, &[hv])?;
        self.dt_bias.meta().expect("dt_bias", dev, f32s, &[hv])?;
        self.g.meta().expect_output("g", dev, f32s, &[tokens, hv])?;
        self.beta.meta().expect_output("beta", dev, f32s, &[tokens, hv])
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
        self.weight.meta().expect("conv_weight", dev, &[DType::F32], &[c, dims.conv_width])?;
        if let Some(b) = &self.bias {
            b.meta().expect("conv_bias", dev, &[DType::F32], &[c])?;
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
        let mut beta_dtypes = caps.input_dtypes.clone();
        beta_dtypes.push(DType::F32);
        self.q.meta().expect("q", dev, &caps.input_dtypes, &[tokens, hk, k])?;
        self.k.meta().expect("k", dev, &caps.input_dtypes, &[tokens, hk, k])?;
        self.v.meta().expect("v", dev, &caps.input_dtypes, &[tokens, hv, v])?;
        self.g.meta().expect("g", dev, &[DType::F32], &[tokens, hv])?;
        self.beta.meta().expect("beta", dev, &beta_dtypes, &[tokens, hv])?;
        self.o.meta().expect_output("o", dev, &caps.input_dtypes, &[tokens, hv, v])
    }
}

/// The pool type a dispatcher works on.
pub type PoolOf<D> = StatePool<<D as KernelDispatcher>::Memory, <D as KernelDispatcher>::Layout>;

/// A backend's kernels. Every method validates its inputs (or relies on the
/// layer forward having done so) and leaves the pool unchanged on error.
///
/// Because every method takes `StatePool<Self::Memory, Self::Layout>`, handing
/// a V-major pool to a K-major kernel does not compile.
pub trait KernelDispatcher: Send + Sync {
    /// The backend's native recurrent layout.
    type Layout: StateLayout;
    /// The backend's memory.
    type Memory: DeviceMemory;

    /// What the backend supports.
    fn capabilities(&self) -> &Capabilities;
    /// Its memory (for pools and workspaces).
    fn memory(&self) -> &Self::Memory;

    /// Creates a pool in this backend's layout and memory.
    fn new_pool(&self, config: PoolConfig) -> Result<PoolOf<Self>>
    where
        Self: Sized,
    {
        StatePool::new(self.memory().clone(), config, self.capabilities())
    }

    /// Fused gate over `T` tokens.
    fn gate(&self, dims: &ModelDims, io: GateIo<'_>) -> Result<()>;
    /// Conv over packed sequences: starts from each slot's conv state when
    /// `has_initial_state` (else zeros), leaves the last W-1 raw inputs in it,
    /// and writes snapshot conv states.
    fn conv_extend(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &ExtendBatch, io: ConvIo<'_>) -> Result<()>
    where
        Self: Sized;
    /// Conv of one token per request, updating the slot's conv state.
    fn conv_update(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &DecodeBatch, io: ConvIo<'_>) -> Result<()>
    where
        Self: Sized;
    /// Conv of draft tokens: step `t` convolves on its parent's window and
    /// writes its window to the scratch; the slot's conv state is untouched.
    fn conv_verify(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &VerifyBatch, io: ConvIo<'_>) -> Result<()>
    where
        Self: Sized;
    /// Chunked delta rule over packed sequences, in place on the slots, with snapshots.
    fn extend(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &ExtendBatch, io: DeltaIo<'_>) -> Result<()>
    where
        Self: Sized;
    /// One token per request, in place.
    fn decode(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &DecodeBatch, io: DeltaIo<'_>) -> Result<()>
    where
        Self: Sized;
    /// Draft tokens: each step from its parent's state, written to scratch; main state untouched.
    fn verify(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &VerifyBatch, io: DeltaIo<'_>) -> Result<()>
    where
        Self: Sized;
    /// Copies each request's accepted scratch step into its slot (and snapshot slot).
    fn commit(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &CommitBatch) -> Result<()>
    where
        Self: Sized,
    {
        let _span = tracing::debug_span!("commit", backend = %self.capabilities().backend, layer, requests = batch.slots().len()).entered();
        pool.commit_accepted(layer, batch)
    }
}
