//! GPU figures for issue 6, on the Qwen3.5-35B-A3B GDN shape (HK 16, HV 32,
//! K = V = 128): device-to-device copy bandwidth, decode at several batch
//! sizes (as a fraction of that bandwidth: decode reads and writes every
//! state once), and chunked extend. Needs a GPU:
//! `cargo run --release -p deltanet-backend-cuda --example bench [-- <state dtype f32|bf16>]`.
//! Times are host wall clock. Decode: each call timed to the stream's
//! completion, through the batch-only entry point (a one-use plan per call:
//! table build and upload) and through a step plan built once (what every
//! layer after the first pays), interleaved A B A B. Extend: repetitions
//! queued back to back, the stream synchronised once after them.
//! Compare extend with fla's `chunk_gated_delta_rule` on the same shape in the same run.

use deltanet_backend_cuda::{CudaDispatcher, StepPlan};
use deltanet_core::{
    DType, DecodeBatch, DeltaIo, DeltaParams, DeviceMemory, DeviceTensor, ExtendBatch, KernelDispatcher, Kernels, MambaStatePool,
    ModelDims, PoolConfig,
};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let d = match CudaDispatcher::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
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
    drop((src, dst));

    let dims = ModelDims::new(16, 32, 128, 128, 4)?;
    let params = DeltaParams::new(&dims);
    let inputs = |t: usize| -> deltanet_core::Result<[DeviceTensor<_>; 6]> {
        let (hk, hv, k, v) = (16, 32, 128, 128);
        let wave = |n: usize, s: f32| (0..n).map(|i| (i as f32 * 0.37).sin() * s).collect::<Vec<f32>>();
        Ok([
            DeviceTensor::from_f32(m, DType::BF16, &[t, hk, k], &wave(t * hk * k, 1.0))?,
            DeviceTensor::from_f32(m, DType::BF16, &[t, hk, k], &wave(t * hk * k, 0.8))?,
            DeviceTensor::from_f32(m, DType::BF16, &[t, hv, v], &wave(t * hv * v, 0.5))?,
            DeviceTensor::from_f32(m, DType::F32, &[t, hv], &vec![-0.05; t * hv])?,
            DeviceTensor::from_f32(m, DType::F32, &[t, hv], &vec![0.6; t * hv])?,
            DeviceTensor::zeros(m, DType::BF16, &[t, hv, v])?,
        ])
    };

    for batch in [1usize, 16, 64, 256] {
        let mut pool = d.new_pool(PoolConfig::new(1, batch, dims).with_state_dtype(state_dtype))?;
        let slots = pool.alloc(batch)?;
        let b = DecodeBatch::new(&pool, &slots)?;
        let [q, k, v, g, beta, mut o] = inputs(batch)?;
        let mut plan = StepPlan::new();
        d.plan_decode(&mut plan, &pool, &b)?;
        let planned = d.planned(&plan);
        let mut run = |pool: &mut _, on_plan: bool| {
            let io = DeltaIo { q: q.view(), k: k.view(), v: v.view(), g: g.view(), beta: beta.view(), o: o.view_mut(), params };
            if on_plan {
                planned.decode(pool, 0, &b, io)
            } else {
                d.decode(pool, 0, &b, io)
            }
        };
        run(&mut pool, false)?;
        let reps = 50;
        // one-use plans and the step plan, interleaved (A B A B)
        let (mut t_one, mut t_plan) = (0.0, 0.0);
        for _ in 0..reps {
            sync()?;
            let t = Instant::now();
            run(&mut pool, false)?;
            sync()?;
            t_one += t.elapsed().as_secs_f64();
            let t = Instant::now();
            run(&mut pool, true)?;
            sync()?;
            t_plan += t.elapsed().as_secs_f64();
        }
        let (dt, dp) = (t_one / reps as f64, t_plan / reps as f64);
        let moved = 2.0 * (batch * dims.state_elems() * state_dtype.size()) as f64;
        println!(
            "decode batch {batch:>4}: {:>8.1} us ({:>8.1} us on a step plan), {:>6.0} GB/s state traffic = {:>5.1}% of D2D copy",
            dt * 1e6,
            dp * 1e6,
            moved / dt / 1e9,
            100.0 * moved / dt / 1e9 / copy_bw
        );
    }

    for (n, len) in [(1usize, 4096usize), (8, 1024), (4, 8192)] {
        let mut pool = d.new_pool(PoolConfig::new(1, n, dims).with_state_dtype(state_dtype))?;
        let slots = pool.alloc(n)?;
        let cu: Vec<usize> = (0..=n).map(|i| i * len).collect();
        let b = ExtendBatch::new(&pool, &cu, &slots, &vec![false; n])?;
        let [q, k, v, g, beta, mut o] = inputs(n * len)?;
        let mut run = |pool: &mut _| {
            let io = DeltaIo { q: q.view(), k: k.view(), v: v.view(), g: g.view(), beta: beta.view(), o: o.view_mut(), params };
            d.extend(pool, 0, &b, io)
        };
        run(&mut pool)?;
        let reps = 5;
        sync()?;
        let t = Instant::now();
        for _ in 0..reps {
            run(&mut pool)?;
        }
        sync()?;
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        println!("extend {n} x {len} tokens: {:>9.3} ms ({:.0} tokens/s)", dt * 1e3, (n * len) as f64 / dt);
    }
    Ok(())
}
