//! `deltanet info`: which backends this build has, which can run here, and what they support.

use crate::backend::{Backend, BACKEND_NAMES};

/// One line per backend name: compiled in or not, usable or why not, layout, dtypes.
pub fn describe() -> Vec<String> {
    BACKEND_NAMES
        .iter()
        .map(|name| match Backend::from_name(name) {
            Ok(b) => {
                let c = b.capabilities();
                let names = |v: &[deltanet_core::DType]| v.iter().map(|d| d.name()).collect::<Vec<_>>().join("/");
                format!(
                    "{name:<8} usable       layout {}, conv {:?}, state {}, conv state {}, inputs {}, chunk {}{}{}",
                    c.native_layout.name(),
                    c.conv_layout,
                    names(&c.state_dtypes),
                    names(&c.conv_dtypes),
                    names(&c.input_dtypes),
                    c.chunk_size,
                    c.max_draft_tokens.map_or(String::new(), |d| format!(", max draft {d}")),
                    c.limits.max_head_dim.map_or(String::new(), |d| format!(", max head dim {d}")),
                )
            }
            Err(e @ deltanet_core::Error::NotCompiled { .. }) => format!("{name:<8} not built    {e}"),
            Err(e) => format!("{name:<8} unavailable  {e}"),
        })
        .collect()
}
