//! Model dimensions of one GDN layer and the per-call parameters of the delta rule.

use crate::error::{Error, Result};
use crate::size;

/// How value head `h` picks its query/key head when `HV > HK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HeadMapping {
    /// `h / (HV / HK)`: the Hugging Face checkpoint order (default).
    #[default]
    Grouped,
    /// `h % HK`: some converted checkpoints. Only ever chosen explicitly.
    Tiled,
}

impl HeadMapping {
    /// Parses `"grouped"` / `"tiled"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "grouped" => Some(HeadMapping::Grouped),
            "tiled" => Some(HeadMapping::Tiled),
            _ => None,
        }
    }

    /// The name [`HeadMapping::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            HeadMapping::Grouped => "grouped",
            HeadMapping::Tiled => "tiled",
        }
    }
}

/// Dimensions of one GDN layer, built with named setters by [`ModelDims::builder`]
/// (or positionally by [`ModelDims::new`]).
///
/// ```
/// use deltanet_core::ModelDims;
/// let d = ModelDims::builder().key_heads(16).value_heads(32).head_k_dim(128).head_v_dim(128).conv_width(4).build()?; // Qwen3.5-35B-A3B
/// assert_eq!(d.conv_dim(), 2 * 16 * 128 + 32 * 128);
/// assert_eq!(d.key_head(31), 15);
/// assert_eq!(d, ModelDims::new(16, 32, 128, 128, 4)?);
/// # Ok::<(), deltanet_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelDims {
    /// Query/key heads (HK).
    pub num_k_heads: usize,
    /// Value heads (HV), a multiple of HK.
    pub num_v_heads: usize,
    /// Key head dim (K).
    pub head_k_dim: usize,
    /// Value head dim (V).
    pub head_v_dim: usize,
    /// Short-convolution kernel width (W, 4 in every Qwen model).
    pub conv_width: usize,
    /// Query/key head for each value head.
    pub head_mapping: HeadMapping,
}

impl ModelDims {
    /// A builder with named setters: every dim must be set; the head mapping
    /// is [`HeadMapping::Grouped`] unless set.
    pub fn builder() -> ModelDimsBuilder {
        ModelDimsBuilder::default()
    }

    /// The positional shorthand of [`builder`](Self::builder): validated dims
    /// `(HK, HV, K, V, W)` with grouped head mapping.
    pub fn new(hk: usize, hv: usize, k: usize, v: usize, conv_width: usize) -> Result<Self> {
        let d =
            ModelDims { num_k_heads: hk, num_v_heads: hv, head_k_dim: k, head_v_dim: v, conv_width, head_mapping: HeadMapping::Grouped };
        d.validate()?;
        Ok(d)
    }

    /// The same dims with another head mapping.
    pub fn with_head_mapping(mut self, m: HeadMapping) -> Self {
        self.head_mapping = m;
        self
    }

    /// Checks the invariants every backend relies on.
    pub fn validate(&self) -> Result<()> {
        if self.num_k_heads == 0 || self.num_v_heads == 0 || self.head_k_dim == 0 || self.head_v_dim == 0 {
            return Err(Error::InvalidConfig(format!("all dims must be positive: {self:?}")));
        }
        if !self.num_v_heads.is_multiple_of(self.num_k_heads) {
            return Err(Error::InvalidConfig(format!("HV = {} is not a multiple of HK = {}", self.num_v_heads, self.num_k_heads)));
        }
        if self.conv_width < 2 {
            return Err(Error::InvalidConfig(format!("conv width {} < 2", self.conv_width)));
        }
        // Every count derived below must fit, in bytes of the widest dtype (f32),
        // so the unchecked accessors never wrap on validated dims.
        self.checked_conv_dim()?;
        size::bytes("state_elems (HV*K*V) in f32 bytes", &[self.num_v_heads, self.head_k_dim, self.head_v_dim, 4])?;
        size::bytes("conv_elems (conv_dim*(W-1)) in f32 bytes", &[self.checked_conv_dim()?, self.conv_width - 1, 4])?;
        Ok(())
    }

    fn checked_conv_dim(&self) -> Result<usize> {
        let qk = size::product("HK*K", &[2, self.num_k_heads, self.head_k_dim])?;
        let v = size::product("HV*V", &[self.num_v_heads, self.head_v_dim])?;
        size::sum("conv_dim (2*HK*K + HV*V)", &[qk, v])
    }

    /// Channels of the short convolution: `2*HK*K + HV*V`.
    pub fn conv_dim(&self) -> usize {
        2 * self.num_k_heads * self.head_k_dim + self.num_v_heads * self.head_v_dim
    }

    /// Columns of conv state kept per request: `W - 1`.
    pub fn conv_state_len(&self) -> usize {
        self.conv_width - 1
    }

    /// Elements of one request's recurrent state: `HV*K*V`.
    pub fn state_elems(&self) -> usize {
        self.num_v_heads * self.head_k_dim * self.head_v_dim
    }

    /// Elements of one request's conv state: `conv_dim*(W-1)`.
    pub fn conv_elems(&self) -> usize {
        self.conv_dim() * self.conv_state_len()
    }

    /// The query/key head that value head `h` reads.
    #[inline]
    pub fn key_head(&self, h: usize) -> usize {
        match self.head_mapping {
            HeadMapping::Grouped => h / (self.num_v_heads / self.num_k_heads),
            HeadMapping::Tiled => h % self.num_k_heads,
        }
    }
}

/// Named setters for [`ModelDims`] ([`ModelDims::builder`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelDimsBuilder {
    key_heads: Option<usize>,
    value_heads: Option<usize>,
    head_k_dim: Option<usize>,
    head_v_dim: Option<usize>,
    conv_width: Option<usize>,
    head_mapping: HeadMapping,
}

impl ModelDimsBuilder {
    /// Query/key heads (HK; `linear_num_key_heads` in a Hugging Face config).
    pub fn key_heads(mut self, n: usize) -> Self {
        self.key_heads = Some(n);
        self
    }
    /// Value heads (HV, a multiple of HK; `linear_num_value_heads`).
    pub fn value_heads(mut self, n: usize) -> Self {
        self.value_heads = Some(n);
        self
    }
    /// Key head dim (K; `linear_key_head_dim`).
    pub fn head_k_dim(mut self, n: usize) -> Self {
        self.head_k_dim = Some(n);
        self
    }
    /// Value head dim (V; `linear_value_head_dim`).
    pub fn head_v_dim(mut self, n: usize) -> Self {
        self.head_v_dim = Some(n);
        self
    }
    /// Short-convolution kernel width (W; `linear_conv_kernel_dim`, 4 in every Qwen model).
    pub fn conv_width(mut self, n: usize) -> Self {
        self.conv_width = Some(n);
        self
    }
    /// Query/key head of each value head (default [`HeadMapping::Grouped`]).
    pub fn head_mapping(mut self, m: HeadMapping) -> Self {
        self.head_mapping = m;
        self
    }
    /// Validated dims; [`Error::InvalidConfig`] naming the first setter not called,
    /// or the invariant [`ModelDims::validate`] finds broken.
    pub fn build(self) -> Result<ModelDims> {
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| Error::InvalidConfig(format!("ModelDims::builder: {name} not set")));
        let d = ModelDims {
            num_k_heads: need(self.key_heads, "key_heads")?,
            num_v_heads: need(self.value_heads, "value_heads")?,
            head_k_dim: need(self.head_k_dim, "head_k_dim")?,
            head_v_dim: need(self.head_v_dim, "head_v_dim")?,
            conv_width: need(self.conv_width, "conv_width")?,
            head_mapping: self.head_mapping,
        };
        d.validate()?;
        Ok(d)
    }
}

/// Per-call parameters of the delta rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaParams {
    /// Output scale (default `K^-0.5`).
    pub scale: f32,
    /// L2-normalise q and k inside the kernel (`x / sqrt(sum x^2 + 1e-6)`).
    pub use_qk_l2norm: bool,
}

impl DeltaParams {
    /// Defaults: scale `K^-0.5`, L2 norm on.
    pub fn new(dims: &ModelDims) -> Self {
        DeltaParams { scale: (dims.head_k_dim as f32).powf(-0.5), use_qk_l2norm: true }
    }
}

/// The epsilon under the square root of the q/k L2 norm (fla, transformers).
pub const L2NORM_EPS: f32 = 1e-6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_mapping_grouped_and_tiled() {
        let d = ModelDims::new(2, 8, 4, 4, 4).unwrap();
        let grouped: Vec<_> = (0..8).map(|h| d.key_head(h)).collect();
        assert_eq!(grouped, [0, 0, 0, 0, 1, 1, 1, 1]);
        let t = d.with_head_mapping(HeadMapping::Tiled);
        let tiled: Vec<_> = (0..8).map(|h| t.key_head(h)).collect();
        assert_eq!(tiled, [0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn invalid_dims_rejected() {
        assert!(matches!(ModelDims::new(3, 4, 8, 8, 4), Err(Error::InvalidConfig(_))));
        assert!(matches!(ModelDims::new(0, 4, 8, 8, 4), Err(Error::InvalidConfig(_))));
        assert!(matches!(ModelDims::new(1, 4, 8, 8, 1), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn builder_names_each_dim() {
        // Distinct values, so a setter wired to the wrong field changes the result.
        let b = ModelDims::builder().key_heads(2).value_heads(6).head_k_dim(8).head_v_dim(16).conv_width(3);
        let d = b.build().unwrap();
        assert_eq!((d.num_k_heads, d.num_v_heads, d.head_k_dim, d.head_v_dim, d.conv_width), (2, 6, 8, 16, 3));
        assert_eq!(d, ModelDims::new(2, 6, 8, 16, 3).unwrap());
        assert_eq!(b.head_mapping(HeadMapping::Tiled).build().unwrap(), d.with_head_mapping(HeadMapping::Tiled));
    }

    #[test]
    fn builder_refuses_missing_and_invalid_dims() {
        let full = ModelDims::builder().key_heads(2).value_heads(6).head_k_dim(8).head_v_dim(16).conv_width(3);
        let Err(Error::InvalidConfig(m)) = ModelDims::builder().key_heads(2).value_heads(6).head_k_dim(8).conv_width(3).build() else {
            panic!("accepted without head_v_dim")
        };
        assert!(m.contains("head_v_dim"), "{m}");
        assert!(matches!(full.value_heads(5).build(), Err(Error::InvalidConfig(_)))); // 5 % 2 != 0
        assert!(matches!(full.conv_width(1).build(), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn overflowing_dims_rejected() {
        let Err(Error::InvalidConfig(m)) = ModelDims::new(1, 1, 1 << 32, 1 << 32, 4) else { panic!("accepted") };
        assert!(m.contains("state_elems"), "{m}");
        assert!(matches!(ModelDims::new(1, 1, 1 << 63, 1, 4), Err(Error::InvalidConfig(_))));
        assert!(matches!(ModelDims::new(1, 1, 1, 1 << 63, 4), Err(Error::InvalidConfig(_))));
        assert!(matches!(ModelDims::new(1, 1, 4, 4, usize::MAX), Err(Error::InvalidConfig(_))));
    }
}
