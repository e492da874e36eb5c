//! Model shapes of DESIGN §7: the GDN layers of the Qwen hybrids.

use deltanet_core::{ModelDims, Result};

/// A named model: how many GDN layers and their dims.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPreset {
    /// CLI name.
    pub name: &'static str,
    /// GDN layers.
    pub layers: usize,
    /// Dims of each GDN layer.
    pub dims: ModelDims,
}

const fn dims(hk: usize, hv: usize, kv: usize) -> ModelDims {
    ModelDims {
        num_k_heads: hk,
        num_v_heads: hv,
        head_k_dim: kv,
        head_v_dim: kv,
        conv_width: 4,
        head_mapping: deltanet_core::HeadMapping::Grouped,
    }
}

/// Every preset.
pub const MODELS: [ModelPreset; 5] = [
    ModelPreset { name: "qwen3-next-80b-a3b", layers: 36, dims: dims(16, 32, 128) },
    ModelPreset { name: "qwen3.5-0.8b", layers: 18, dims: dims(16, 16, 128) },
    ModelPreset { name: "qwen3.5-2b", layers: 18, dims: dims(16, 16, 128) },
    ModelPreset { name: "qwen3.5-35b-a3b", layers: 30, dims: dims(16, 32, 128) },
    ModelPreset { name: "qwen3.5-397b-a17b", layers: 45, dims: dims(16, 64, 128) },
];

/// Looks a preset up by name, or parses `custom:L,HK,HV,K,V` (W = 4).
pub fn find(name: &str) -> Result<ModelPreset> {
    if let Some(spec) = name.strip_prefix("custom:") {
        let n: Vec<usize> =
            spec.split(',').map(|x| x.trim().parse::<usize>()).collect::<std::result::Result<_, _>>().map_err(|_| bad(name))?;
        let [layers, hk, hv, k, v] = n[..] else { return Err(bad(name)) };
        return Ok(ModelPreset { name: "custom", layers, dims: ModelDims::new(hk, hv, k, v, 4)? });
    }
    MODELS.iter().find(|m| m.name == name).copied().ok_or_else(|| bad(name))
}

fn bad(name: &str) -> deltanet_core::Error {
    let names: Vec<_> = MODELS.iter().map(|m| m.name).collect();
    deltanet_core::Error::InvalidConfig(format!("unknown model `{name}`: one of {} or custom:L,HK,HV,K,V", names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_custom_parses() {
        for m in MODELS {
            m.dims.validate().unwrap();
        }
        let c = find("custom:2,1,2,16,24").unwrap();
        assert_eq!((c.layers, c.dims.num_v_heads, c.dims.head_v_dim), (2, 2, 24));
        assert!(find("custom:2,1").is_err());
        assert!(find("llama").is_err());
    }
}
