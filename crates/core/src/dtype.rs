//! Element types of tensors and pool buffers.

use half::{bf16, f16};

/// The dtypes a tensor view or a pool buffer can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE binary16.
    F16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Lower-case name (`"f32"`, `"bf16"`, `"f16"`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// Parses a name as [`DType::name`] prints it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "F32" | "float32" => Some(DType::F32),
            "bf16" | "BF16" | "bfloat16" => Some(DType::BF16),
            "f16" | "F16" | "float16" => Some(DType::F16),
            _ => None,
        }
    }

    /// Rounds an f32 through this dtype and back (identity for f32).
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::BF16 => bf16::from_f32(x).to_f32(),
            DType::F16 => f16::from_f32(x).to_f32(),
        }
    }

    /// Decodes little-endian bytes of this dtype into f32 values.
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) {
        let n = self.size();
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(n)) {
            *o = match self {
                DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                DType::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
            };
        }
    }

    /// Encodes f32 values into little-endian bytes of this dtype (round to nearest even).
    pub fn encode(self, values: &[f32], out: &mut [u8]) {
        let n = self.size();
        for (v, c) in values.iter().zip(out.chunks_exact_mut(n)) {
            match self {
                DType::F32 => c.copy_from_slice(&v.to_le_bytes()),
                DType::BF16 => c.copy_from_slice(&bf16::from_f32(*v).to_le_bytes()),
                DType::F16 => c.copy_from_slice(&f16::from_f32(*v).to_le_bytes()),
            }
        }
    }

    /// Convenience: decode a whole byte buffer into a new vector.
    pub fn decode_vec(self, bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0; bytes.len() / self.size()];
        self.decode(bytes, &mut out);
        out
    }

    /// Convenience: encode values into a new byte vector.
    pub fn encode_vec(self, values: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; values.len() * self.size()];
        self.encode(values, &mut out);
        out
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that stores one [`DType`]: `f32`, `half::bf16`, `half::f16`.
pub trait Element: Copy + Send + Sync + bytemuck::Pod + 'static {
    /// Its dtype tag.
    const DTYPE: DType;
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
    /// Narrows from f32, rounding to nearest even.
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_each_dtype() {
        let vals = [0.0f32, 1.0, -2.5, 3.140625, 1e-3];
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let bytes = dt.encode_vec(&vals);
            assert_eq!(bytes.len(), vals.len() * dt.size());
            let back = dt.decode_vec(&bytes);
            for (a, b) in vals.iter().zip(&back) {
                assert_eq!(dt.round(*a), *b, "{dt}");
            }
        }
        assert_eq!(DType::parse("bf16"), Some(DType::BF16));
        assert_eq!(DType::parse("q8"), None);
    }
}
