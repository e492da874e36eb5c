//! The CUDA backend's host logic and kernels, run in the CPU emulation of the
//! CUDA execution model, through the whole conformance suite (DESIGN §5) and
//! against the f64 oracle. `cargo test -p deltanet-backend-cuda --features emulate`.
//!
//! Long cases (1000 and 4096 tokens) run with `DELTANET_CONFORMANCE_LONG=1`:
//! every CUDA thread is an OS thread here, so they take minutes on 2 cores.
#![cfg(feature = "emulate")]

use deltanet_backend_cuda::{CudaDispatcher, EmuLauncher};
use deltanet_core::conformance::{assert_check, Check, SuiteOptions};

fn make() -> CudaDispatcher<EmuLauncher> {
    CudaDispatcher::emulated()
}

fn opts() -> SuiteOptions {
    let mut o = SuiteOptions::from_env();
    o.long = std::env::var("DELTANET_CONFORMANCE_LONG").is_ok_and(|v| v == "1");
    o
}

macro_rules! checks {
    ($($name:ident => $check:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                assert_check(Check::$check, &make, &opts());
            }
        )*
    };
}

checks! {
    extend_vs_oracle => ExtendOracle,
    split_extend => SplitExtend,
    extend_then_decode => ExtendDecode,
    verify_commit => VerifyCommit,
    batch_invariance => BatchInvariance,
    determinism => Determinism,
    layout_round_trip => LayoutRoundTrip,
    dtypes => DTypes,
    strides => Strides,
    bad_input => BadInput,
    layer_forward => LayerForward,
}
