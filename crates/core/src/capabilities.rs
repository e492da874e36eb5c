//! What a backend supports ([`Capabilities`]), built once per backend with
//! [`Capabilities::new`] and its `with_*` methods. Every configuration outside
//! it is refused before anything is allocated or written: when a pool is made
//! and, again, when any of its operations is validated
//! ([`crate::dispatch::KernelDispatcher`]), so a pool made under another
//! backend's capabilities never reaches a kernel that cannot run it.

use crate::dims::{HeadMapping, ModelDims};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{ConvLayoutKind, LayoutKind};
use crate::pool::PoolConfig;
use crate::spec::SpecMode;
use crate::tensor::Device;

/// Model-dimension limits of a backend's kernels (`None`: unbounded). Build
/// one with `DimLimits { max_head_dim: Some(256), ..DimLimits::default() }`,
/// which keeps compiling when limits are added.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DimLimits {
    /// Largest HK and HV.
    pub max_heads: Option<usize>,
    /// Largest K and V.
    pub max_head_dim: Option<usize>,
    /// Conv widths W the kernels take (`None`: any W >= 2).
    pub conv_widths: Option<Vec<usize>>,
    /// Smallest and largest conv channel count `2*HK*K + HV*V`.
    pub conv_dim_range: Option<(usize, usize)>,
    /// The conv channel count must be a multiple of this (1: any).
    pub conv_dim_multiple: usize,
    /// Head mappings the kernels implement (`None`: both).
    pub head_mappings: Option<Vec<HeadMapping>>,
}

impl DimLimits {
    /// Refuses `dims` outside the limits, naming `backend` and the limit.
    pub fn check(&self, backend: &str, dims: &ModelDims) -> Result<()> {
        let bad = |reason: String| Err(Error::Unsupported { backend: backend.into(), reason });
        if let Some(max) = self.max_heads {
            if dims.num_k_heads > max || dims.num_v_heads > max {
                return bad(format!("HK={} HV={}: at most {max} heads", dims.num_k_heads, dims.num_v_heads));
            }
        }
        if let Some(max) = self.max_head_dim {
            if dims.head_k_dim > max || dims.head_v_dim > max {
                return bad(format!("head dims K={} V={} > {max}", dims.head_k_dim, dims.head_v_dim));
            }
        }
        if let Some(w) = &self.conv_widths {
            if !w.contains(&dims.conv_width) {
                return bad(format!("conv width {}: the conv kernels take {w:?}", dims.conv_width));
            }
        }
        let c = dims.conv_dim();
        if let Some((lo, hi)) = self.conv_dim_range {
            if c < lo || c > hi {
                return bad(format!("conv_dim {c}: the conv kernels need {lo} <= conv_dim <= {hi}"));
            }
        }
        if !c.is_multiple_of(self.conv_dim_multiple.max(1)) {
            return bad(format!("conv_dim {c}: the conv kernels need a multiple of {}", self.conv_dim_multiple));
        }
        if let Some(m) = &self.head_mappings {
            if !m.contains(&dims.head_mapping) {
                return bad(format!("head mapping {}: the kernels implement {m:?}", dims.head_mapping.name()));
            }
        }
        Ok(())
    }
}

/// What a backend supports. The pool refuses any configuration outside it at
/// construction, and every operation re-checks its pool against it, so an
/// unsupported dtype or dimension never reaches a kernel.
///
/// ```
/// use deltanet_core::*;
/// let caps = Capabilities::new("mine", Device::Host, LayoutKind::VMajor).with_state_dtypes(&[DType::BF16]);
/// let dims = ModelDims::new(1, 1, 8, 8, 4).unwrap();
/// assert!(caps.check_pool_config(&PoolConfig::new(1, 1, dims)).is_err()); // f32 state refused
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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
    /// Model-dimension limits.
    pub limits: DimLimits,
    /// Chunk length of the chunked extend (64).
    pub chunk_size: usize,
    /// Speculative modes the kernels implement; a pool in another mode is refused.
    pub spec_modes: Vec<SpecMode>,
}

impl Capabilities {
    /// A backend `backend` on `device` in `layout`, with the defaults every
    /// backend starts from: channels-first conv state, f32 or bf16 state,
    /// f32/bf16/f16 conv state and inputs, no draft or dimension limit, chunk 64,
    /// [`SpecMode::Scratch`] only.
    pub fn new(backend: &str, device: Device, layout: LayoutKind) -> Self {
        Capabilities {
            backend: backend.into(),
            device,
            native_layout: layout,
            conv_layout: ConvLayoutKind::ChannelsFirst,
            state_dtypes: vec![DType::F32, DType::BF16],
            conv_dtypes: vec![DType::F32, DType::BF16, DType::F16],
            input_dtypes: vec![DType::F32, DType::BF16, DType::F16],
            max_draft_tokens: None,
            limits: DimLimits::default(),
            chunk_size: 64,
            spec_modes: vec![SpecMode::Scratch],
        }
    }

    /// Capabilities of a host backend with every dtype (tests and examples).
    pub fn host_reference(layout: LayoutKind) -> Self {
        Self::new("host-reference", Device::Host, layout)
    }

    /// Sets the conv-state layout.
    pub fn with_conv_layout(mut self, layout: ConvLayoutKind) -> Self {
        self.conv_layout = layout;
        self
    }
    /// Sets the recurrent-state dtypes.
    pub fn with_state_dtypes(mut self, dtypes: &[DType]) -> Self {
        self.state_dtypes = dtypes.to_vec();
        self
    }
    /// Sets the conv-state dtypes.
    pub fn with_conv_dtypes(mut self, dtypes: &[DType]) -> Self {
        self.conv_dtypes = dtypes.to_vec();
        self
    }
    /// Sets the input and output dtypes.
    pub fn with_input_dtypes(mut self, dtypes: &[DType]) -> Self {
        self.input_dtypes = dtypes.to_vec();
        self
    }
    /// Bounds the draft count D.
    pub fn with_max_draft_tokens(mut self, max: usize) -> Self {
        self.max_draft_tokens = Some(max);
        self
    }
    /// Sets the model-dimension limits.
    pub fn with_limits(mut self, limits: DimLimits) -> Self {
        self.limits = limits;
        self
    }
    /// Sets the speculative modes the kernels implement.
    pub fn with_spec_modes(mut self, modes: &[SpecMode]) -> Self {
        self.spec_modes = modes.to_vec();
        self
    }
    /// Sets the chunk length of the chunked extend.
    pub fn with_chunk_size(mut self, chunk: usize) -> Self {
        self.chunk_size = chunk;
        self
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
        if let Some(s) = cfg.spec {
            if !self.spec_modes.contains(&s.mode) {
                let modes: Vec<&str> = self.spec_modes.iter().map(|m| m.name()).collect();
                return Err(Error::Unsupported {
                    backend: self.backend.clone(),
                    reason: format!("speculative mode {} (the kernels implement {})", s.mode, modes.join(", ")),
                });
            }
        }
        if let (Some(max), Some(s)) = (self.max_draft_tokens, cfg.spec) {
            if s.draft_tokens > max {
                return Err(Error::Unsupported {
                    backend: self.backend.clone(),
                    reason: format!("{} draft tokens > {max}", s.draft_tokens),
                });
            }
        }
        self.limits.check(&self.backend, &cfg.dims)
    }
}
