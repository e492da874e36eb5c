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

/// A decode step through a fixed-capacity plan captured as a CUDA graph on
/// the engine's stream and replayed equals, bitwise, the same step run
/// uncaptured (outputs and states). Runs whenever a GPU is present.
#[test]
fn a_captured_decode_step_replays_as_the_uncaptured_one() {
    use deltanet_backend_cuda::cudarc::driver::{sys, CudaContext};
    use deltanet_backend_cuda::{CudaMemory, GpuLauncher, StepPlan};
    use deltanet_conformance::{LayerInputs, LayerParams};
    use deltanet_core::{
        forward_decode, DType, DecodeBatch, DeltaParams, DeviceTensor, HostState, KernelDispatcher, Kernels, LayerInput, LayerWeights,
        LayerWorkspace, MambaStatePool, ModelDims, PoolConfig,
    };
    if let Err(why) = probe() {
        println!("skipped: {why}");
        return;
    }
    let ctx = CudaContext::new(0).unwrap();
    // SAFETY: no cudarc object of this context exists yet; the test orders its
    // work on its one stream, so cudarc's cross-stream events (which a capture
    // must not wait on) are not needed.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let d = match CudaDispatcher::on_stream(0, stream.clone()) {
        Ok(d) => d,
        Err(e) => return println!("skipped: {e}"),
    };
    let (layers, requests) = (3, 4);
    let dims = ModelDims::new(16, 32, 128, 128, 4).unwrap();
    let mut pool = d.new_pool(PoolConfig::new(layers, requests, dims)).unwrap();
    let slots = pool.alloc(requests).unwrap();
    let cfg = pool.geometry().config;
    let mut r = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(16);
    let mut random = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rand::Rng::gen_range(&mut r, -scale..scale)).collect() };
    let start: Vec<HostState> = slots
        .iter()
        .map(|_| {
            let (t, c) = (random(layers * dims.state_elems(), 0.5), random(layers * dims.conv_elems(), 1.0));
            HostState::from_f32(layers, dims, cfg.state_dtype, cfg.conv_dtype, &t, &c).unwrap()
        })
        .collect();
    let m = d.memory().clone();
    let (hv, c) = (dims.num_v_heads, dims.conv_dim());
    let weights: Vec<Vec<DeviceTensor<_>>> = (0..layers)
        .map(|l| {
            let p = LayerParams::random(&dims, l as u64);
            [(&p.a_log, vec![hv]), (&p.dt_bias, vec![hv]), (&p.conv_weight, vec![c, dims.conv_width]), (&p.conv_bias, vec![c])]
                .iter()
                .map(|(v, s)| DeviceTensor::from_f32(&m, DType::F32, s, v).unwrap())
                .collect()
        })
        .collect();
    let x = LayerInputs::random(&dims, requests, DType::BF16, 7);
    let qkv = DeviceTensor::from_f32(&m, DType::BF16, &[requests, c], &x.mixed_qkv).unwrap();
    let a = DeviceTensor::from_f32(&m, DType::BF16, &[requests, hv], &x.a).unwrap();
    let b = DeviceTensor::from_f32(&m, DType::BF16, &[requests, hv], &x.b).unwrap();
    let mut outs: Vec<DeviceTensor<_>> =
        (0..layers).map(|_| DeviceTensor::zeros(&m, DType::BF16, &[requests, hv, dims.head_v_dim]).unwrap()).collect();
    let mut ws = LayerWorkspace::new(m.clone());
    let mut plan = StepPlan::with_capacity(requests);
    let batch = DecodeBatch::new(&pool, &slots).unwrap();
    let params = DeltaParams::new(&dims);
    type Pool = deltanet_core::PoolOf<CudaDispatcher>;
    let step =
        |pool: &mut Pool, ws: &mut LayerWorkspace<CudaMemory>, outs: &mut [DeviceTensor<CudaMemory>], plan: &StepPlan<GpuLauncher>| {
            for (l, (w, o)) in weights.iter().zip(outs.iter_mut()).enumerate() {
                let lw = LayerWeights { a_log: w[0].view(), dt_bias: w[1].view(), conv_weight: w[2].view(), conv_bias: Some(w[3].view()) };
                let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
                forward_decode(&d.planned(plan), pool, l, &batch, &lw, &input, params, ws, o.view_mut()).unwrap();
            }
        };
    let restore = |pool: &mut Pool| {
        for (s, st) in slots.iter().zip(&start) {
            pool.import(*s, st).unwrap();
        }
    };
    let results = |pool: &Pool, outs: &[DeviceTensor<CudaMemory>]| {
        let o: Vec<Vec<f32>> = outs.iter().map(|o| o.to_f32().unwrap()).collect();
        let s: Vec<Vec<u8>> = slots.iter().map(|&s| pool.export(s).unwrap().temporal).collect();
        (o, s)
    };
    // uncaptured (this also grows the workspace: the captured step allocates nothing)
    restore(&mut pool);
    d.plan_decode(&mut plan, &pool, &batch).unwrap();
    step(&mut pool, &mut ws, &mut outs, &plan);
    let eager = results(&pool, &outs);
    // captured, then replayed from the same starting states
    restore(&mut pool);
    d.plan_decode(&mut plan, &pool, &batch).unwrap();
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    step(&mut pool, &mut ws, &mut outs, &plan);
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0)).unwrap().expect("a graph was captured");
    restore(&mut pool);
    graph.launch().unwrap();
    stream.synchronize().unwrap();
    let replayed = results(&pool, &outs);
    assert!(eager.0 == replayed.0, "captured outputs differ");
    assert!(eager.1 == replayed.1, "captured states differ");
    println!("captured and replayed a {layers}-layer decode step of {requests} requests: bitwise equal");
}
