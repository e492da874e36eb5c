//! The Ascend generations ([`SocFamily`], from `aclrtGetSocName`) and what
//! the aclnn GDN and CausalConv1d operators document for each: dtypes, draft
//! tokens, head counts and dims, conv widths and channels, the head mapping.
//! All of it becomes the dispatcher's [`Capabilities`], which core checks
//! every pool and every call against, so nothing outside it reaches an operator.

use crate::result::BACKEND;
use deltanet_core::{Capabilities, ConvLayoutKind, DType, Device, DimLimits, HeadMapping, LayoutKind, SpecMode};

/// Largest tokens per sequence of `aclnnRecurrentGatedDeltaRule` (`0 < L_i <= 8`).
pub const MAX_RECURRENT_TOKENS: usize = 8;
/// Largest `Nk`, `Nv` of `aclnnChunkGatedDeltaRule` (`<= 64`; the recurrent operator allows 256).
pub const MAX_HEADS: usize = 64;
/// Largest `Dk`, `Dv` of `aclnnChunkGatedDeltaRule` (`<= 128`; the recurrent operator allows 512).
pub const MAX_HEAD_DIM: usize = 128;
/// Conv `dim` range of the CausalConv1d operators.
pub const CONV_DIM_RANGE: (usize, usize) = (64, 16384);
/// Conv widths the CausalConv1d operators support.
pub const CONV_WIDTHS: [usize; 3] = [2, 3, 4];

/// The Ascend generation, from `aclrtGetSocName`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocFamily {
    /// Atlas A2 (`Ascend910B*`).
    A2,
    /// Atlas A3 (`Ascend910_93*`).
    A3,
    /// Ascend 950PR / 950DT (`Ascend950*`).
    Ascend950,
    /// Anything else (310P, 910A, ...): the GDN operators are not documented for it.
    Other(String),
}

impl SocFamily {
    /// Classifies a SoC name. The A2/A3 names are the runtime's (`Ascend910B1`..`B4`,
    /// `Ascend910_9391`...); the 950 prefix is assumed (`Ascend950`), not confirmed.
    pub fn from_soc_name(name: &str) -> Self {
        if name.starts_with("Ascend910B") {
            SocFamily::A2
        } else if name.starts_with("Ascend910_93") {
            SocFamily::A3
        } else if name.starts_with("Ascend950") {
            SocFamily::Ascend950
        } else {
            SocFamily::Other(name.to_string())
        }
    }

    /// The capabilities the aclnn GDN operators document for this generation:
    /// bf16 q/k/v/beta/out (`aclnnChunkGatedDeltaRule`, `aclnnRecurrentGatedDeltaRule`);
    /// state bf16, plus f32 only on 950 (the chunk operator's "float32 only on
    /// Ascend 950" limit binds, the recurrent one takes both); at most 8 draft tokens;
    /// head dims <= 128; conv state channels-last `[stateLen, dim]` in the input dtype.
    ///
    /// Speculative mode scratch only: a replay verify must compute every draft's
    /// output without writing the state, but `aclnnRecurrentGatedDeltaRule`
    /// updates the state it reads in place, so each draft would need a state
    /// copy first (the scratch mode's cost), and it takes no per-token parents,
    /// so tree drafts cannot share one pass. A replay pool is refused
    /// ([`Error::Unsupported`](deltanet_core::Error::Unsupported)).
    pub fn capabilities(&self, device: usize) -> Capabilities {
        let state_dtypes = match self {
            SocFamily::A2 | SocFamily::A3 => vec![DType::BF16],
            SocFamily::Ascend950 => vec![DType::BF16, DType::F32],
            SocFamily::Other(_) => vec![],
        };
        Capabilities::new(BACKEND, Device::Npu(device), LayoutKind::VMajor)
            .with_conv_layout(ConvLayoutKind::ChannelsLast)
            .with_state_dtypes(&state_dtypes)
            .with_conv_dtypes(&[DType::BF16])
            .with_input_dtypes(&[DType::BF16])
            .with_max_draft_tokens(MAX_RECURRENT_TOKENS)
            .with_limits(dim_limits())
            .with_chunk_size(64)
            .with_spec_modes(&[SpecMode::Scratch])
    }

    /// Whether `aclnnCausalConv1dFn` / `aclnnCausalConv1dUpdate` are documented for it
    /// (the ops-transformer docs mark them for Ascend 950 only).
    pub fn has_conv_ops(&self) -> bool {
        matches!(self, SocFamily::Ascend950)
    }
}

/// Model-dimension limits of the operators: heads and head dims of
/// `aclnnChunkGatedDeltaRule`, the grouped head mapping (`h / (HV/HK)`) of
/// the GDN operators, and the CausalConv1d operators' widths and channel
/// range (`64 <= dim <= 16384`, `dim * 2` bytes a multiple of 32).
pub fn dim_limits() -> DimLimits {
    DimLimits {
        max_heads: Some(MAX_HEADS),
        max_head_dim: Some(MAX_HEAD_DIM),
        conv_widths: Some(CONV_WIDTHS.to_vec()),
        conv_dim_range: Some(CONV_DIM_RANGE),
        conv_dim_multiple: 16,
        head_mappings: Some(vec![HeadMapping::Grouped]),
    }
}
