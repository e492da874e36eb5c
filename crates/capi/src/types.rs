//! The plain C structs and enum values of the ABI, and their checked
//! conversion to and from deltanet's Rust types. Enum-typed fields a caller
//! fills in are `uint32_t` on the wire (an arbitrary integer in a Rust enum
//! would be undefined behaviour) and converted here.

use crate::args::invalid;
use crate::dlpack::{DLDevice, DLTensor, DN_KDL_CPU, DN_KDL_CUDA, DN_KDL_EXT_DEV};
use crate::status::CResult;
use facade::{BufferKind, ConvLayoutKind, DType, DeltaParams, Device, HeadMapping, LayoutKind, ModelDims, PoolConfig, SpecMode};

/// Element types (`uint32_t` fields and bit positions of dtype masks).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dn_dtype {
    /// IEEE binary32.
    DN_DTYPE_F32 = 0,
    /// bfloat16.
    DN_DTYPE_BF16 = 1,
    /// IEEE binary16.
    DN_DTYPE_F16 = 2,
}

/// Recurrent-state layouts.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dn_layout {
    /// `[HV, K, V]` (canonical; fla, transformers).
    DN_LAYOUT_K_MAJOR = 0,
    /// `[HV, V, K]` (Ascend aclnn, sglang and vLLM today).
    DN_LAYOUT_V_MAJOR = 1,
}

/// Conv-state layouts.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dn_conv_layout {
    /// `[conv_dim, W-1]` (canonical).
    DN_CONV_CHANNELS_FIRST = 0,
    /// `[W-1, conv_dim]`.
    DN_CONV_CHANNELS_LAST = 1,
}

/// Which value head reads which key head.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dn_head_mapping {
    /// `h / (HV/HK)`: Hugging Face checkpoints (the default).
    DN_HEAD_MAPPING_GROUPED = 0,
    /// `h % HK`: some converted checkpoints; only ever chosen explicitly.
    DN_HEAD_MAPPING_TILED = 1,
}

/// How a pool holds speculative drafts between verify and commit.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dn_spec_mode {
    /// D per-step states and conv windows per request; commit copies one back (the default).
    DN_SPEC_SCRATCH = 0,
    /// The drafts' inputs per request; commit replays the accepted path (same bits, a
    /// fraction of the memory; see the backend's capabilities for support).
    DN_SPEC_REPLAY = 1,
}

/// Which buffer a `dn_buffer_descriptor` describes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dn_buffer_kind {
    /// Conv state, `[slots+1, conv bytes]` of one layer.
    DN_BUFFER_CONV = 0,
    /// Recurrent state, `[slots+1, state bytes]` of one layer.
    DN_BUFFER_TEMPORAL = 1,
    /// Speculative scratch states, `[slots+1, D, state bytes]` of one layer (replay
    /// mode: the drafts' k, v, g, beta records, `[slots+1, D, HV, K+V+2]` f32).
    DN_BUFFER_SCRATCH = 2,
    /// Speculative conv windows, `[slots+1, D, conv bytes]` of one layer (replay mode:
    /// the drafts' raw conv inputs, `[slots+1, D, conv_dim]` in the conv dtype).
    DN_BUFFER_CONV_WINDOWS = 3,
}

/// Dims of one GDN layer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dn_model_dims {
    /// Query/key heads HK.
    pub num_k_heads: usize,
    /// Value heads HV (a multiple of HK).
    pub num_v_heads: usize,
    /// Key head dim K.
    pub head_k_dim: usize,
    /// Value head dim V.
    pub head_v_dim: usize,
    /// Short-conv width W (4 in every Qwen model).
    pub conv_width: usize,
    /// A `dn_head_mapping` value.
    pub head_mapping: u32,
}

/// What a pool holds.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dn_pool_config {
    /// GDN layers L.
    pub layers: usize,
    /// Allocatable slots (the buffers hold one more: slot 0, padding).
    pub slots: usize,
    /// Dims of every layer.
    pub dims: dn_model_dims,
    /// A `dn_dtype` value: recurrent state (f32 or bf16, as the backend supports).
    pub state_dtype: u32,
    /// A `dn_dtype` value: conv state.
    pub conv_dtype: u32,
    /// Speculative draft tokens D per request (0: no speculative buffers).
    pub draft_tokens: usize,
    /// A `dn_spec_mode` value (0, scratch, when zero-initialised); replay needs `draft_tokens > 0`.
    pub spec_mode: u32,
}

/// What a backend supports.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dn_capabilities {
    /// Backend name, valid while the backend handle lives.
    pub name: *const std::ffi::c_char,
    /// Where its kernels run (DLPack device).
    pub device: DLDevice,
    /// A `dn_layout` value: the layout of every pool it makes.
    pub native_layout: u32,
    /// A `dn_conv_layout` value.
    pub conv_layout: u32,
    /// Bit `1 << d` set for each `dn_dtype` d supported for the recurrent state.
    pub state_dtypes: u32,
    /// Likewise for the conv state.
    pub conv_dtypes: u32,
    /// Likewise for q, k, v, beta, a, b, mixed_qkv and outputs.
    pub input_dtypes: u32,
    /// Largest draft count D (0: unbounded).
    pub max_draft_tokens: usize,
    /// Largest K and V (0: unbounded).
    pub max_head_dim: usize,
    /// Chunk length of the chunked extend.
    pub chunk_size: usize,
}

/// Where a pool stands.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dn_pool_info {
    /// A `dn_layout` value.
    pub layout: u32,
    /// A `dn_conv_layout` value.
    pub conv_layout: u32,
    /// A `dn_dtype` value: recurrent state.
    pub state_dtype: u32,
    /// A `dn_dtype` value: conv state.
    pub conv_dtype: u32,
    /// Where the buffers are.
    pub device: DLDevice,
    /// GDN layers.
    pub layers: usize,
    /// Allocatable slots.
    pub capacity: usize,
    /// Slots free now.
    pub free_count: usize,
    /// Draft tokens D (0: none).
    pub draft_tokens: usize,
    /// A `dn_spec_mode` value (scratch when the pool has no speculative buffers).
    pub spec_mode: u32,
    /// Total bytes of every buffer.
    pub bytes: usize,
    /// Bytes of one slot's exported recurrent state, `[L, HV, K, V]` in `state_dtype`.
    pub export_state_bytes: usize,
    /// Bytes of one slot's exported conv state, `[L, conv_dim, W-1]` in `conv_dtype`.
    pub export_conv_bytes: usize,
}

/// One layer's part of one pool buffer, for transfer engines: slot `s`
/// occupies `addr + s * bytes_per_slot`, `bytes_per_slot` bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dn_buffer_descriptor {
    /// A `dn_buffer_kind` value.
    pub kind: u32,
    /// Layer.
    pub layer: usize,
    /// Device of `addr`.
    pub device: DLDevice,
    /// Address of slot 0 of this layer.
    pub addr: u64,
    /// Bytes of this layer's part (all slots).
    pub bytes: usize,
    /// Bytes per slot.
    pub bytes_per_slot: usize,
}

/// A prefix-cache snapshot request of an extend batch: after `position`
/// tokens (1..=len) of sequence `seq`, copy the state into `slot`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dn_snapshot {
    /// Sequence index in the batch.
    pub seq: usize,
    /// Tokens of this extend after which the state is taken.
    pub position: usize,
    /// Destination slot (allocated, not in the batch).
    pub slot: u64,
}

/// Per-call parameters of the delta rule (pass NULL for the defaults:
/// scale `K^-0.5`, L2 norm on).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dn_delta_params {
    /// Output scale.
    pub scale: f32,
    /// 1: L2-normalise q and k in the kernel; 0: they already are.
    pub use_qk_l2norm: u8,
}

/// A layer's weights for the layer forward.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dn_layer_weights {
    /// `[HV]`, f32.
    pub a_log: *const DLTensor,
    /// `[HV]`, f32.
    pub dt_bias: *const DLTensor,
    /// `[conv_dim, W]`, f32.
    pub conv_weight: *const DLTensor,
    /// `[conv_dim]`, f32, or NULL.
    pub conv_bias: *const DLTensor,
}

/// The dtype of a `dn_dtype` value.
pub fn dtype_from(v: u32, name: &str) -> CResult<DType> {
    match v {
        0 => Ok(DType::F32),
        1 => Ok(DType::BF16),
        2 => Ok(DType::F16),
        other => Err(invalid(format!("`{name}` = {other} is not a dn_dtype"))),
    }
}

/// The `dn_dtype` value of a dtype.
pub fn dtype_to(d: DType) -> u32 {
    (match d {
        DType::F32 => dn_dtype::DN_DTYPE_F32,
        DType::BF16 => dn_dtype::DN_DTYPE_BF16,
        DType::F16 => dn_dtype::DN_DTYPE_F16,
    }) as u32
}

/// The bit mask of a dtype list.
pub fn dtype_mask(ds: &[DType]) -> u32 {
    ds.iter().fold(0, |m, &d| m | (1 << dtype_to(d)))
}

/// The `dn_layout` value of a layout.
pub fn layout_to(l: LayoutKind) -> u32 {
    (match l {
        LayoutKind::KMajor => dn_layout::DN_LAYOUT_K_MAJOR,
        LayoutKind::VMajor => dn_layout::DN_LAYOUT_V_MAJOR,
    }) as u32
}

/// The `dn_conv_layout` value of a conv layout.
pub fn conv_layout_to(l: ConvLayoutKind) -> u32 {
    (match l {
        ConvLayoutKind::ChannelsFirst => dn_conv_layout::DN_CONV_CHANNELS_FIRST,
        ConvLayoutKind::ChannelsLast => dn_conv_layout::DN_CONV_CHANNELS_LAST,
    }) as u32
}

/// The `dn_buffer_kind` value of a buffer kind.
pub fn buffer_kind_to(k: BufferKind) -> u32 {
    (match k {
        BufferKind::Conv => dn_buffer_kind::DN_BUFFER_CONV,
        BufferKind::Temporal => dn_buffer_kind::DN_BUFFER_TEMPORAL,
        BufferKind::Scratch => dn_buffer_kind::DN_BUFFER_SCRATCH,
        BufferKind::ConvWindows => dn_buffer_kind::DN_BUFFER_CONV_WINDOWS,
    }) as u32
}

/// The DLPack device of a device.
pub fn device_to(d: Device) -> DLDevice {
    let (device_type, id) = match d {
        Device::Host => (DN_KDL_CPU, 0),
        Device::Cuda(i) => (DN_KDL_CUDA, i),
        Device::Npu(i) => (DN_KDL_EXT_DEV, i),
    };
    DLDevice { device_type, device_id: i32::try_from(id).unwrap_or(i32::MAX) }
}

/// Validated model dims.
pub fn dims_from(d: &dn_model_dims) -> CResult<ModelDims> {
    let mapping = match d.head_mapping {
        0 => HeadMapping::Grouped,
        1 => HeadMapping::Tiled,
        other => return Err(invalid(format!("`head_mapping` = {other} is not a dn_head_mapping"))),
    };
    Ok(ModelDims::new(d.num_k_heads, d.num_v_heads, d.head_k_dim, d.head_v_dim, d.conv_width)?.with_head_mapping(mapping))
}

/// A pool configuration (validated by the pool itself when made).
pub fn config_from(c: &dn_pool_config) -> CResult<PoolConfig> {
    let mut cfg = PoolConfig::new(c.layers, c.slots, dims_from(&c.dims)?)
        .with_state_dtype(dtype_from(c.state_dtype, "state_dtype")?)
        .with_conv_dtype(dtype_from(c.conv_dtype, "conv_dtype")?);
    let mode = match c.spec_mode {
        0 => SpecMode::Scratch,
        1 => SpecMode::Replay,
        other => return Err(invalid(format!("`spec_mode` = {other} is not a dn_spec_mode"))),
    };
    if c.draft_tokens > 0 || mode != SpecMode::Scratch {
        // replay without drafts is refused by `validate` below
        cfg = cfg.with_speculative(c.draft_tokens).with_spec_mode(mode);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Delta-rule parameters (NULL: the defaults for `dims`).
pub fn params_from(p: Option<&dn_delta_params>, dims: &ModelDims) -> CResult<DeltaParams> {
    let mut out = DeltaParams::new(dims);
    if let Some(p) = p {
        out.scale = p.scale;
        out.use_qk_l2norm = crate::args::flag(p.use_qk_l2norm, "use_qk_l2norm")?;
    }
    Ok(out)
}
