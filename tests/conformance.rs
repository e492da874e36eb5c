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

/// Random batch compositions (1-4 sequences of 1-200 tokens, random initial-state
/// flags, random verify trees of 1-4 drafts, random accepted steps) on both layouts.
mod random_batches {
    use deltanet_backend_cpu::{CpuKMajor, CpuVMajor};
    use deltanet_core::conformance::{check_batch, SuiteOptions};
    use deltanet_core::ModelDims;
    use proptest::prelude::*;

    fn batch() -> impl Strategy<Value = (Vec<usize>, Vec<bool>, Vec<i64>, Vec<usize>)> {
        (1usize..5, 1usize..5).prop_flat_map(|(n, d)| {
            let tree = prop::collection::vec((0..d).map(|t| (-1i64..t as i64).boxed()).collect::<Vec<_>>(), n);
            (
                prop::collection::vec(prop_oneof![1usize..8, 60usize..70, 1usize..200], n),
                prop::collection::vec(any::<bool>(), n),
                tree.prop_map(|v| v.into_iter().flatten().collect::<Vec<i64>>()),
                prop::collection::vec(0..d, n),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn random_batch_matches_oracle((lens, init, parents, accepted) in batch(), vmajor in any::<bool>(), tiled in any::<bool>()) {
            let mut dims = ModelDims::new(2, 4, 32, 48, 4).unwrap();
            if tiled {
                dims = dims.with_head_mapping(deltanet_core::HeadMapping::Tiled);
            }
            let opts = SuiteOptions { long: false, ..SuiteOptions::default() };
            let cases = if vmajor {
                check_batch(&CpuVMajor::new(), dims, &lens, &init, &parents, &accepted, &opts)
            } else {
                check_batch(&CpuKMajor::new(), dims, &lens, &init, &parents, &accepted, &opts)
            };
            prop_assert!(cases.len() >= 2 + lens.len());
            for c in &cases {
                prop_assert!(c.passed, "{}", c);
            }
        }
    }
}

/// The Ascend NPU backend: runs for real where CANN and a supported device are
/// present, prints `skipped: <reason>` and passes elsewhere.
#[cfg(feature = "npu")]
mod npu {
    deltanet_core::conformance_tests!(fallible deltanet_backend_npu::NpuDispatcher::new(0));

    /// The NPU against the CPU V-major kernels (same layout), when present.
    #[test]
    fn npu_agrees_with_cpu() {
        let Some(npu) = deltanet_core::conformance::available(deltanet_backend_npu::NpuDispatcher::new(0)) else { return };
        let cpu = deltanet_backend_cpu::CpuVMajor::new();
        let cases = deltanet_core::conformance::cross_layout(&npu, &cpu, &deltanet_core::conformance::SuiteOptions::from_env());
        for c in &cases {
            println!("{c}");
        }
        assert!(cases.iter().all(|c| c.passed));
    }
}

/// The CUDA backend: runs for real where the driver, NVRTC and a GPU are
/// present, prints `skipped: <reason>` and passes elsewhere.
#[cfg(feature = "cuda")]
mod cuda {
    deltanet_core::conformance_tests!(fallible deltanet_backend_cuda::CudaDispatcher::new(0));

    /// CUDA against the CPU kernels of its layout, when a GPU is present.
    #[test]
    fn cuda_agrees_with_cpu() {
        let Some(gpu) = deltanet_core::conformance::available(deltanet_backend_cuda::CudaDispatcher::new(0)) else { return };
        let opts = deltanet_core::conformance::SuiteOptions::from_env();
        let cases = match deltanet_core::Kernels::capabilities(&gpu).native_layout {
            deltanet_core::LayoutKind::KMajor => {
                deltanet_core::conformance::cross_layout(&gpu, &deltanet_backend_cpu::CpuKMajor::new(), &opts)
            }
            deltanet_core::LayoutKind::VMajor => {
                deltanet_core::conformance::cross_layout(&gpu, &deltanet_backend_cpu::CpuVMajor::new(), &opts)
            }
        };
        for c in &cases {
            println!("{c}");
        }
        assert!(cases.iter().all(|c| c.passed));
    }
}
