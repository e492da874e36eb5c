//! Regenerates `src/sys/bindings.rs` from the CANN headers, only with
//! `--features regenerate-bindings` and only when the headers are found under
//! `ASCEND_TOOLKIT_HOME` or `ASCEND_HOME_PATH`. A default build does nothing
//! here and needs neither CANN nor libclang.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ASCEND_TOOLKIT_HOME");
    println!("cargo:rerun-if-env-changed=ASCEND_HOME_PATH");
    #[cfg(feature = "regenerate-bindings")]
    regenerate::run();
}

#[cfg(feature = "regenerate-bindings")]
mod regenerate {
    use std::path::PathBuf;

    const HEADERS: [&str; 16] = [
        "acl/acl.h",
        "aclnn/acl_meta.h",
        "aclnnop/aclnn_chunk_gated_delta_rule.h",
        "aclnnop/aclnn_recurrent_gated_delta_rule.h",
        "aclnnop/aclnn_causal_conv1d_fn.h",
        "aclnnop/aclnn_causal_conv1d_update.h",
        "aclnnop/aclnn_add.h",
        "aclnnop/aclnn_adds.h",
        "aclnnop/aclnn_mul.h",
        "aclnnop/aclnn_reduce_sum.h",
        "aclnnop/aclnn_rsqrt.h",
        "aclnnop/aclnn_exp.h",
        "aclnnop/aclnn_neg.h",
        "aclnnop/aclnn_sigmoid.h",
        "aclnnop/aclnn_softplus.h",
        "aclnnop/aclnn_cast.h",
    ];

    pub fn run() {
        let root = ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"].iter().find_map(|v| std::env::var_os(v)).map(PathBuf::from);
        let Some(root) = root else {
            println!("cargo:warning=regenerate-bindings: neither ASCEND_TOOLKIT_HOME nor ASCEND_HOME_PATH is set; keeping the checked-in bindings");
            return;
        };
        let include = root.join("include");
        let present: Vec<&str> = HEADERS.iter().copied().filter(|h| include.join(h).exists()).collect();
        if present.is_empty() {
            println!("cargo:warning=regenerate-bindings: no CANN headers under {}; keeping the checked-in bindings", include.display());
            return;
        }
        for h in HEADERS.iter().filter(|h| !present.contains(h)) {
            println!("cargo:warning=regenerate-bindings: {h} not found under {}", include.display());
        }
        let wrapper: String = present.iter().map(|h| format!("#include \"{h}\"\n")).collect();
        let bindings = bindgen::Builder::default()
            .header_contents("wrapper.hpp", &wrapper)
            .clang_args(["-x", "c++", "-std=c++14"])
            .clang_arg(format!("-I{}", include.display()))
            .allowlist_function("acl.*")
            .allowlist_type("acl.*")
            .allowlist_var("ACL.*")
            .dynamic_library_name("Cann")
            .dynamic_link_require_all(false)
            .generate()
            .expect("bindgen failed on the CANN headers");
        let out = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("src/sys/bindings.generated.rs");
        bindings.write_to_file(&out).expect("write bindings");
        println!("cargo:warning=regenerate-bindings: wrote {}; review and replace src/sys/bindings.rs", out.display());
    }
}
