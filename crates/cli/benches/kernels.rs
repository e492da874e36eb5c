//! Criterion benches of the CPU kernels on the Qwen3.5-35B-A3B GDN shape
//! (HK 16, HV 32, K = V = 128, f32 state), 2 threads (override with
//! `DELTANET_BENCH_THREADS`), printing the machine ceilings measured in the
//! same run. The same setups back `deltanet bench` (see `deltanet_cli::bench`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deltanet_cli::bench::*;
use deltanet_core::DType;
use std::time::Duration;

fn threads() -> usize {
    std::env::var("DELTANET_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2)
}

fn ceilings(_c: &mut Criterion) {
    let th = threads();
    let g = measure_gemm_ceiling(th, 2048);
    let m = measure_rmw_ceiling(th, cycle_bytes());
    println!(
        "ceilings, {th} threads: f32 GEMM 2048^3 {:.1} GFLOP/s (extend target 0.85x = {:.1}); in-place read-modify-write {:.1} GB/s read+write",
        g.gflops,
        0.85 * g.gflops,
        m.gbps
    );
}

fn extend(c: &mut Criterion) {
    let dims = qwen35_35b_dims();
    let th = threads();
    let mut grp = c.benchmark_group("extend");
    grp.sample_size(10).measurement_time(Duration::from_secs(10));
    for t in [512, 4096, 32768] {
        let mut b = ExtendBench::new(dims, t, th, DType::F32).expect("setup");
        grp.throughput(Throughput::Elements(t as u64));
        grp.bench_function(BenchmarkId::new("tokens", t), |bch| bch.iter(|| b.run()));
        let flop = t as f64 * dims.num_v_heads as f64 * extend_flop_per_token_head(dims.head_k_dim, dims.head_v_dim);
        println!("extend T={t}: {:.3e} FLOP per run (divide by the time above for FLOP/s)", flop);
    }
    grp.finish();
    let mut grp = c.benchmark_group("chunked_prefill");
    grp.sample_size(10).measurement_time(Duration::from_secs(20));
    let mut b = ExtendBench::new(dims, 32768, th, DType::F32).expect("setup");
    grp.throughput(Throughput::Elements(32768));
    grp.bench_function("one_extend_32768", |bch| bch.iter(|| b.run()));
    grp.bench_function("chunks_of_2048", |bch| bch.iter(|| b.run_chunked(2048)));
    grp.finish();
}

fn decode(c: &mut Criterion) {
    let dims = qwen35_35b_dims();
    let th = threads();
    let mut grp = c.benchmark_group("decode");
    grp.sample_size(20).measurement_time(Duration::from_secs(5));
    for batch in [1, 8, 32, 64] {
        for st in [DType::F32, DType::BF16] {
            let mut b = DecodeBench::new(dims, batch, st, 0, th, cycle_bytes()).expect("setup");
            grp.throughput(Throughput::Bytes(2 * (batch * dims.state_elems() * st.size()) as u64));
            grp.bench_function(BenchmarkId::new(format!("{st}"), batch), |bch| bch.iter(|| b.decode_step()));
        }
    }
    grp.finish();
    let mut grp = c.benchmark_group("verify_d4");
    grp.sample_size(20).measurement_time(Duration::from_secs(5));
    for batch in [1, 8] {
        let mut b = DecodeBench::new(dims, batch, DType::F32, 4, th, cycle_bytes()).expect("setup");
        grp.bench_function(BenchmarkId::new("verify", batch), |bch| bch.iter(|| b.verify_step()));
        grp.bench_function(BenchmarkId::new("4_decodes", batch), |bch| {
            bch.iter(|| {
                for _ in 0..4 {
                    b.decode_step()
                }
            })
        });
    }
    grp.finish();
}

criterion_group!(benches, ceilings, extend, decode);
criterion_main!(benches);
