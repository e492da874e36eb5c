//! The one bindgen configuration for the CANN bindings, shared by `build.rs`
//! (`--features regenerate-bindings`) and the header check
//! (`bindings-check/`, which includes this file with `#[path]`), so the
//! bindings that are checked are generated exactly as the crate would
//! regenerate them: C++ mode, the same allow-lists, the dynamic-loading shape.

use std::path::{Path, PathBuf};

/// Runtime headers: devices, streams, memory, events, data types, formats and
/// error codes (`acl/acl.h` pulls in acl_rt.h, acl_base.h, acl_base_rt.h and
/// error_codes/).
pub const RUNTIME_HEADERS: [&str; 1] = ["acl/acl.h"];

/// Operator headers, present only in a full CANN install.
pub const OPERATOR_HEADERS: [&str; 13] = [
    "aclnn/acl_meta.h",
    "aclnnop/aclnn_chunk_gated_delta_rule.h",
    "aclnnop/aclnn_recurrent_gated_delta_rule.h",
    "aclnnop/aclnn_causal_conv1d_fn.h",
    "aclnnop/aclnn_causal_conv1d_update.h",
    "aclnnop/aclnn_add.h",
    "aclnnop/aclnn_mul.h",
    "aclnnop/aclnn_exp.h",
    "aclnnop/aclnn_neg.h",
    "aclnnop/aclnn_sigmoid.h",
    "aclnnop/aclnn_softplus.h",
    "aclnnop/aclnn_cast.h",
    "aclnnop/aclnn_rms_norm.h",
];

/// What to generate from.
pub struct Inputs {
    /// The include root (`<CANN>/include`, or the wheel's `third_party/acl/inc`).
    pub include: PathBuf,
    /// Headers under `include` to read.
    pub headers: Vec<String>,
    /// op-plugin's `op_api_common_base.h`: its block of descriptor-function
    /// types (`_aclCreateTensor`... and `OpApiFunc`, the operators' second
    /// phase) is appended to the wrapper. The rest of that header needs
    /// PyTorch and is not read.
    pub opapi_common_base: Option<PathBuf>,
}

/// The first and last lines of op_api_common_base.h's function-type block.
const TYPES_BEGIN: &str = "typedef struct aclOpExecutor aclOpExecutor;";
const TYPES_END: &str = "using OpApiFunc";

/// The descriptor-function type block of op_api_common_base.h (from the
/// `aclOpExecutor` forward declaration up to and including `using OpApiFunc ...;`).
pub fn opapi_type_block(text: &str) -> Result<String, String> {
    let start = text.find(TYPES_BEGIN).ok_or_else(|| format!("op_api_common_base.h: `{TYPES_BEGIN}` not found"))?;
    let rest = &text[start..];
    let end_at = rest.find(TYPES_END).ok_or_else(|| format!("op_api_common_base.h: `{TYPES_END}` not found"))?;
    let semi = rest[end_at..].find(';').ok_or("op_api_common_base.h: `using OpApiFunc` has no `;`")?;
    Ok(rest[..end_at + semi + 1].to_string())
}

/// The C++ translation unit bindgen reads.
pub fn wrapper(inputs: &Inputs) -> Result<String, String> {
    let mut w: String = inputs.headers.iter().map(|h| format!("#include \"{h}\"\n")).collect();
    if let Some(p) = &inputs.opapi_common_base {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        w.push_str(&opapi_type_block(&text)?);
        w.push('\n');
    }
    Ok(w)
}

/// Runs bindgen and returns the generated Rust source.
pub fn generate(inputs: &Inputs) -> Result<String, String> {
    let wrapper = wrapper(inputs)?;
    let bindings = bindgen::Builder::default()
        .header_contents("wrapper.hpp", &wrapper)
        .clang_args(["-x", "c++", "-std=c++14"])
        .clang_arg(format!("-I{}", inputs.include.display()))
        // `#define ACL_ERROR_RT_... 207001` as `aclError`'s type (`int`), not bindgen's default u32.
        .default_macro_constant_type(bindgen::MacroTypeVariation::Signed)
        .allowlist_function("acl.*")
        .allowlist_type("acl.*")
        .allowlist_type("_acl.*")
        .allowlist_type("OpApiFunc")
        .allowlist_var("ACL.*")
        .dynamic_library_name("Cann")
        .dynamic_link_require_all(false)
        .layout_tests(false)
        .generate()
        .map_err(|e| format!("bindgen failed on the CANN headers under {}: {e}", inputs.include.display()))?;
    Ok(bindings.to_string())
}

/// The headers of `candidates` present under `include`.
pub fn present(include: &Path, candidates: &[&str]) -> Vec<String> {
    candidates.iter().filter(|h| include.join(h).exists()).map(|h| h.to_string()).collect()
}
