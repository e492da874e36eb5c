//! GPU figures for issues 6 and 17, on the Qwen3.5-35B-A3B GDN shape (HK 16,
//! HV 32, K = V = 128), bf16 inputs: device-to-device copy bandwidth, decode
//! at several batch sizes (as a fraction of that bandwidth: decode reads and
//! writes every state once), verify of D = 4 drafts against one decode, and
//! chunked extend on the portable and the tensor-core kernel, their
//! repetitions interleaved (A B A B), with the FLOP rate of the README's
//! formula. Needs a GPU:
//! `cargo run --release -p deltanet-backend-cuda --example bench [-- <state dtype f32|bf16>]`.
//! Times are host wall clock, with the stream synchronised around each timed
//! call or group of calls. Decode: each call timed to the stream's
//! completion, through the batch-only entry point (a one-use plan per call:
//! table build and upload) and through a step plan built once (what every
//! layer after the first pays), interleaved A B A B; verify of D = 4 through
//! the batch-only entry point. Extend: the portable and the tensor-core
//! kernel interleaved, each repetition timed to the stream's completion.
//! Besides the human-readable lines, each figure is printed once as
//! `FIGURE <name> <value>` for scripts/device-check.sh, which runs fla's
//! kernels on the same shapes in the same run.

use deltanet_backend_cuda::{CudaDispatcher, ExtendPath, StepPlan};
use deltanet_core::{
    DType, DecodeBatch, DeltaIo, DeltaParams, DeviceMemory, DeviceTensor, ExtendBatch, KernelDispatcher, Kernels, MambaStatePool,
    ModelDims, PoolConfig, VerifyBatch,
};
use std::time::Instant;

/// FLOPs of one chunked extend over `tokens` tokens (README, "FLOP count"):
/// per value head and token, 2 (C (3K + 2V) + 3 K V) with chunk C = 64.
fn extend_flops(tokens: usize, hv: usize, k: usize, v: usize) -> f64 {
    2.0 * (tokens * hv) as f64 * (64 * (3 * k + 2 * v) + 3 * k * v) as f64
}

fn figure(name: &str, value: f64) {
    println!("FIGURE {name} {value}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let portable = match CudaDispatcher::new(0) {
        Ok(d) => d.with_extend_path(ExtendPath::Portable),
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let tc = CudaDispatcher::new(0)?.with_extend_path(ExtendPath::TensorCore).with_extend_workspace_budget(2 << 30);
    let d = &portable;
    let state_dtype = match std::env::args().nth(1).as_deref() {
        Some("bf16") => DType::BF16,
        _ => DType::F32,
    };
    let sync = || d.memory().stream().synchronize().map_err(|e| format!("synchronize: {e:?}"));
    let (name, arch) = d.device_info();
    println!("device {name} sm_{}{}, state {state_dtype}", arch.0, arch.1);
    let m = d.memory();

    // device-to-device copy bandwidth (read + write)
    let bytes = 1usize << 30;
    let src = m.alloc_zeroed(bytes)?;
    let mut dst = m.alloc_zeroed(bytes)?;
    m.copy_between(&src, 0, &mut dst, 0, bytes)?;
    let reps = 10;
    let mut probe = [0u8; 1];
    m.read(&dst, 0, &mut probe)?;
    let t = Instant::now();
    for _ in 0..reps {
        m.copy_between(&src, 0, &mut dst, 0, bytes)?;
    }
    m.read(&dst, 0, &mut probe)?;
    let copy_bw = 2.0 * (bytes * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!("D2D copy: {copy_bw:.0} GB/s (read + write)");
    figure("d2d_copy_gbps", copy_bw);
    drop((src, dst));

    let (hk, hv, dk, dv) = (16, 32, 128, 128);
    let dims = ModelDims::new(hk, hv, dk, dv, 4)?;
    let params = DeltaParams::new(&dims);
    let inputs = |t: usize| -> deltanet_core::Result<[DeviceTensor<_>; 6]> {
        let wave = |n: usize, s: f32| (0..n).map(|i| (i as f32 * 0.37).sin() * s).collect::<Vec<f32>>();
        Ok([
            DeviceTensor::from_f32(m, DType::BF16, &[t, hk, dk], &wave(t * hk * dk, 1.0))?,
            DeviceTensor::from_f32(m, DType::BF16, &[t, hk, dk], &wave(t * hk * dk, 0.8))?,
            DeviceTensor::from_f32(m, DType::BF16, &[t, hv, dv], &wave(t * hv * dv, 0.5))?,
            DeviceTensor::from_f32(m, DType::F32, &[t, hv], &vec![-0.05; t * hv])?,
            DeviceTensor::from_f32(m, DType::F32, &[t, hv], &vec![0.6; t * hv])?,
            DeviceTensor::zeros(m, DType::BF16, &[t, hv, dv])?,
        ])
    };

    for batch in [1usize, 16, 64, 256] {
        let mut pool = d.new_pool(PoolConfig::new(1, batch, dims).with_state_dtype(state_dtype).with_speculative(4))?;
        let slots = pool.alloc(batch)?;
        let b = DecodeBatch::new(&pool, &slots)?;
        let vb = VerifyBatch::chain(&pool, &slots)?;
        let [q, k, v, g, beta, mut o] = inputs(batch)?;
        let [vq, vk, vv, vg, vbeta, mut vo] = inputs(batch * 4)?;
        let mut plan = StepPlan::new();
        d.plan_decode(&mut plan, &pool, &b)?;
        let planned = d.planned(&plan);
        let mut decode = |pool: &mut _, on_plan: bool| {
            let io = DeltaIo { q: q.view(), k: k.view(), v: v.view(), g: g.view(), beta: beta.view(), o: o.view_mut(), params };
            if on_plan {
                planned.decode(pool, 0, &b, io)
            } else {
                d.decode(pool, 0, &b, io)
            }
        };
        let mut verify = |pool: &mut _| {
            let io = DeltaIo { q: vq.view(), k: vk.view(), v: vv.view(), g: vg.view(), beta: vbeta.view(), o: vo.view_mut(), params };
            d.verify(pool, 0, &vb, io)
        };
        decode(&mut pool, false)?;
        verify(&mut pool)?;
        let reps = 50;
        // one-use plans, the step plan and verify, interleaved (A B C A B C)
        let (mut t_one, mut t_plan, mut t_ver) = (0.0, 0.0, 0.0);
        for _ in 0..reps {
            sync()?;
            let t = Instant::now();
            decode(&mut pool, false)?;
            sync()?;
            t_one += t.elapsed().as_secs_f64();
            let t = Instant::now();
            decode(&mut pool, true)?;
            sync()?;
            t_plan += t.elapsed().as_secs_f64();
            let t = Instant::now();
            verify(&mut pool)?;
            sync()?;
            t_ver += t.elapsed().as_secs_f64();
        }
        let (dt, dp, vt) = (t_one / reps as f64, t_plan / reps as f64, t_ver / reps as f64);
        let moved = 2.0 * (batch * dims.state_elems() * state_dtype.size()) as f64;
        println!(
            "decode batch {batch:>4}: {:>8.1} us ({:>8.1} us on a step plan), {:>6.0} GB/s state traffic = {:>5.1}% of D2D copy; verify D = 4: {:>8.1} us = {:.2}x decode",
            dt * 1e6,
            dp * 1e6,
            moved / dt / 1e9,
            100.0 * moved / dt / 1e9 / copy_bw,
            vt * 1e6,
            vt / dt
        );
        figure(&format!("decode_b{batch}_us"), dt * 1e6);
        figure(&format!("decode_b{batch}_copy_fraction"), moved / dt / 1e9 / copy_bw);
        figure(&format!("decode_plan_b{batch}_us"), dp * 1e6);
        figure(&format!("verify4_b{batch}_us"), vt * 1e6);
        figure(&format!("verify4_b{batch}_over_decode"), vt / dt);
    }

    for (n, len) in [(1usize, 8192usize), (16, 2048), (1, 4096)] {
        let mut pool = d.new_pool(PoolConfig::new(1, n, dims).with_state_dtype(state_dtype))?;
        let slots = pool.alloc(n)?;
        let cu: Vec<usize> = (0..=n).map(|i| i * len).collect();
        let b = ExtendBatch::new(&pool, &cu, &slots, &vec![false; n])?;
        let [q, k, v, g, beta, mut o] = inputs(n * len)?;
        let mut run = |disp: &CudaDispatcher, pool: &mut _| {
            let io = DeltaIo { q: q.view(), k: k.view(), v: v.view(), g: g.view(), beta: beta.view(), o: o.view_mut(), params };
            disp.extend(pool, 0, &b, io)
        };
        run(&portable, &mut pool)?;
        run(&tc, &mut pool)?;
        let reps = 5;
        let (mut tp, mut tt) = (0.0, 0.0);
        for _ in 0..reps {
            sync()?;
            let t = Instant::now();
            run(&portable, &mut pool)?;
            sync()?;
            tp += t.elapsed().as_secs_f64();
            let t = Instant::now();
            run(&tc, &mut pool)?;
            sync()?;
            tt += t.elapsed().as_secs_f64();
        }
        let (tp, tt) = (tp / reps as f64, tt / reps as f64);
        let tflops = extend_flops(n * len, hv, dk, dv) / tt / 1e12;
        println!(
            "extend {n} x {len} tokens: portable {:>9.3} ms, tensor cores {:>9.3} ms ({tflops:.1} TFLOPS, {:.1}x the portable)",
            tp * 1e3,
            tt * 1e3,
            tp / tt
        );
        figure(&format!("extend_{n}x{len}_portable_ms"), tp * 1e3);
        figure(&format!("extend_{n}x{len}_tc_ms"), tt * 1e3);
        figure(&format!("extend_{n}x{len}_tc_tflops"), tflops);
    }
    Ok(())
}
