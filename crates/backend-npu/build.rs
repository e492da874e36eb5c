//! Regenerates the CANN bindings with bindgen, only with
//! `--features regenerate-bindings`. A default build does nothing here and
//! needs neither CANN nor libclang.
//!
//! Where the headers come from, first match wins:
//! - `DELTANET_CANN_INCLUDE`: an include root holding `acl/acl.h` (a CANN
//!   install's `include/`, or `torch_npu/include/third_party/acl/inc` from the
//!   torch-npu wheel), optionally with `DELTANET_OPAPI_COMMON_BASE` naming
//!   op-plugin's `op_api_common_base.h` for the descriptor-function types;
//! - `ASCEND_TOOLKIT_HOME` / `ASCEND_HOME_PATH`: a CANN install, with the
//!   aclnn operator headers too.
//!
//! The output goes to `DELTANET_BINDINGS_OUT`, else `src/sys/bindings.generated.rs`,
//! to be compared with (never silently replacing) `src/sys/bindings.rs`;
//! `check-bindings.sh` does that comparison.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/regenerate.rs");
    for v in ["DELTANET_CANN_INCLUDE", "DELTANET_OPAPI_COMMON_BASE", "DELTANET_BINDINGS_OUT", "ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    #[cfg(feature = "regenerate-bindings")]
    run();
}

#[cfg(feature = "regenerate-bindings")]
#[path = "build/regenerate.rs"]
mod regenerate;

#[cfg(feature = "regenerate-bindings")]
fn run() {
    use std::path::PathBuf;
    let env = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    let (include, headers) = if let Some(inc) = env("DELTANET_CANN_INCLUDE") {
        let h = regenerate::present(&inc, &regenerate::RUNTIME_HEADERS);
        (inc, h)
    } else if let Some(root) = env("ASCEND_TOOLKIT_HOME").or_else(|| env("ASCEND_HOME_PATH")) {
        let inc = root.join("include");
        let mut h = regenerate::present(&inc, &regenerate::RUNTIME_HEADERS);
        h.extend(regenerate::present(&inc, &regenerate::OPERATOR_HEADERS));
        (inc, h)
    } else {
        println!("cargo:warning=regenerate-bindings: none of DELTANET_CANN_INCLUDE, ASCEND_TOOLKIT_HOME, ASCEND_HOME_PATH is set; nothing generated");
        return;
    };
    if headers.is_empty() {
        println!("cargo:warning=regenerate-bindings: no CANN headers under {}; nothing generated", include.display());
        return;
    }
    let inputs = regenerate::Inputs { include, headers, opapi_common_base: env("DELTANET_OPAPI_COMMON_BASE") };
    // A build script cannot return an error; failing the build is the loud answer.
    let src = regenerate::generate(&inputs).unwrap_or_else(|e| panic!("regenerate-bindings: {e}"));
    let out = env("DELTANET_BINDINGS_OUT")
        .unwrap_or_else(|| PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("src/sys/bindings.generated.rs"));
    std::fs::write(&out, src).unwrap_or_else(|e| panic!("regenerate-bindings: write {}: {e}", out.display()));
    println!("cargo:warning=regenerate-bindings: wrote {}; compare it with src/sys/bindings.rs (check-bindings.sh)", out.display());
}
