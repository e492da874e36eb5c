//! On a machine with an NVIDIA GPU (driver and NVRTC present): the whole
//! conformance suite on the real device, and, with the `emulate` feature, the
//! GPU against the CPU emulation of the same kernels. Elsewhere every test
//! prints `skipped: <why>`, after checking that construction fails with a
//! typed `Unavailable` instead of panicking.

use deltanet_backend_cuda::{probe, CudaDispatcher};
use deltanet_core::Error;

#[test]
fn construction_without_a_gpu_is_a_typed_error() {
    match (probe(), CudaDispatcher::new(0)) {
        (Err(why), Err(Error::Unavailable { backend, reason })) => {
            assert_eq!(backend, "cuda");
            assert!(!reason.is_empty());
            println!("skipped: {why} ({reason})");
        }
        (Err(why), other) => panic!("probe says {why:?} but new(0) gave {:?}", other.map(|_| ())),
        (Ok(()), Ok(d)) => println!("GPU present: {:?}", d.device_info()),
        (Ok(()), Err(e)) => {
            // a device is there but NVRTC may be missing: still a typed error
            assert!(matches!(e, Error::Unavailable { .. }), "unexpected error with a GPU present: {e}");
            println!("skipped: {e}");
        }
    }
    // an ordinal past the last device is a typed error on every machine
    assert!(matches!(CudaDispatcher::new(1 << 20), Err(Error::Unavailable { .. })));
}

mod conformance {
    deltanet_conformance::conformance_tests!(fallible deltanet_backend_cuda::CudaDispatcher::new(0));
}

#[cfg(feature = "emulate")]
#[test]
fn gpu_matches_the_emulation() {
    let Some(gpu) = deltanet_conformance::available(CudaDispatcher::new(0)) else { return };
    let emu = CudaDispatcher::emulated();
    let cases = deltanet_conformance::cross_layout(&gpu, &emu, &deltanet_conformance::SuiteOptions::from_env());
    for c in &cases {
        println!("{c}");
    }
    assert!(!cases.is_empty() && cases.iter().all(|c| c.passed));
}

/// The tensor-core extend forced for every input dtype (tf32 operands for f32
/// and f16 inputs, held to 5e-3 as in the emulated suite), on the GPU and in
/// the emulation: the device's mma.sync against the emulated one.
#[cfg(feature = "emulate")]
#[test]
fn gpu_tensor_core_extend_matches_the_emulation() {
    use deltanet_backend_cuda::ExtendPath;
    let Some(gpu) = deltanet_conformance::available(CudaDispatcher::new(0)) else { return };
    let gpu = gpu.with_extend_path(ExtendPath::TensorCore);
    let emu = CudaDispatcher::emulated().with_extend_path(ExtendPath::TensorCore);
    let tf32 = 5e-3;
    let opts = deltanet_conformance::SuiteOptions {
        f32_tol: tf32,
        f32_long_tol: tf32,
        f16_tol: tf32,
        ..deltanet_conformance::SuiteOptions::from_env()
    };
    let cases = deltanet_conformance::cross_layout(&gpu, &emu, &opts);
    for c in &cases {
        println!("{c}");
    }
    assert!(!cases.is_empty() && cases.iter().all(|c| c.passed));
}
