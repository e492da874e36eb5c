//! Every backend the enabled features provide, through the conformance suite
//! (`deltanet_core::conformance`): CPU K-major and CPU V-major always (feature
//! `cpu`), CUDA and NPU when their features are on — those print
//! `skipped: <reason>` and pass when the device or library is absent.
//!
//! Replay a failure with the seed it prints:
//! `DELTANET_CONFORMANCE_SEED=<seed> DELTANET_CONFORMANCE_ONLY="<case>" cargo test --test conformance -- --nocapture`.

#![cfg(feature = "cpu")]

use deltanet_backend_cpu::{CpuKMajor, CpuVMajor};
use deltanet_core::conformance::{cross_layout, SuiteOptions};

mod cpu_kmajor {
    deltanet_core::conformance_tests!(deltanet_backend_cpu::CpuKMajor::new());
}

mod cpu_vmajor {
    deltanet_core::conformance_tests!(deltanet_backend_cpu::CpuVMajor::new());
}

/// DESIGN §5.6: the same inputs on either layout give the same canonical state.
#[test]
fn cpu_kmajor_and_vmajor_agree() {
    let cases = cross_layout(&CpuKMajor::new(), &CpuVMajor::new(), &SuiteOptions::from_env());
    assert!(!cases.is_empty());
    for c in &cases {
        println!("{c}");
    }
    assert!(cases.iter().all(|c| c.passed), "{:#?}", cases.iter().filter(|c| !c.passed).collect::<Vec<_>>());
}
