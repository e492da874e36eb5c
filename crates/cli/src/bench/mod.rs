//! Benchmarks shared by the criterion benches (`benches/kernels.rs`) and the
//! `deltanet bench` CLI: machine ceilings (f32 GEMM through the same `gemm`
//! crate, in-place read-modify-write streaming over more memory than the L3),
//! the kernels on a model shape, and whole layers at serving shapes
//! (the layer module), returned as plain structs with tokens/s, GFLOP/s, GB/s and
//! ratios.
//!
//! Every `*Bench` type owns its pool and inputs, so criterion can time
//! [`ExtendBench::run`] & co. directly; the `bench_*` functions time each
//! group with [`interleaved`] (A B A B rounds, best of each), so that every
//! ratio compares runs made under the same load of a shared machine.
//! [`run_report`] runs the issues' whole set
//! (`cargo run --release -p deltanet-cli --example bench_report`);
//! the README's Performance section has the latest table and what bounds
//! each miss.

mod ceiling;
mod layer;
mod spec;
mod timing;

pub use ceiling::{CopyBench, GemmBench, RmwBench};
pub use layer::{bench_layer, bench_layer_pair, LayerBench, LayerPair, LayerResult, LayerStep, Part};
pub use spec::{bench_spec, SpecResult};
pub use timing::interleaved;

use deltanet_backend_cpu::{CpuDispatcher, CHUNK};
use deltanet_core::*;
use std::time::{Duration, Instant};

/// FLOP per token per value head of the chunked extend, as the issue counts
/// them: `2*(3KV + C(1.5K + V) + C^2/6)` with `C = 64`.
pub fn extend_flop_per_token_head(k: usize, v: usize) -> f64 {
    let (k, v, c) = (k as f64, v as f64, CHUNK as f64);
    2.0 * (3.0 * k * v + c * (1.5 * k + v) + c * c / 6.0)
}

/// Bytes per token per value head the chunked extend must move at least: q,
/// k, v in and o out (f32), and the f32 state read and written once per
/// 64-token chunk. The roofline's arithmetic intensity of an extend is
/// [`extend_flop_per_token_head`] over this.
pub fn extend_bytes_per_token_head(k: usize, v: usize) -> f64 {
    let (k, v, c) = (k as f64, v as f64, CHUNK as f64);
    4.0 * (2.0 * k + 2.0 * v) + 2.0 * 4.0 * k * v / c
}

/// FLOP per token per value head of a decode step: decay (`KV`), `S^T k`,
/// the rank-1 write and the output read (`2KV` each), the correction (`3V`).
pub fn decode_flop_per_token_head(k: usize, v: usize) -> f64 {
    let (k, v) = (k as f64, v as f64);
    7.0 * k * v + 3.0 * v
}

/// Bytes per token per value head of a decode step: its state read and written in place
/// (the [`DecodeResult::gbps`] count).
pub fn decode_bytes_per_token_head(k: usize, v: usize, state: DType) -> f64 {
    2.0 * (k * v * state.size()) as f64
}

/// The Qwen3.5-35B-A3B GDN shape: HK 16, HV 32, K = V = 128, W 4.
pub fn qwen35_35b_dims() -> ModelDims {
    ModelDims::new(16, 32, 128, 128, 4).expect("valid dims")
}

/// Bytes of the last-level cache (from sysfs), if known.
pub fn l3_bytes() -> Option<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index3/size").ok()?;
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().map(|n| n * mul)
}

/// Bytes the decode benches cycle through: twice the L3 (at least 256 MiB, at most 4 GiB).
pub fn cycle_bytes() -> usize {
    (2 * l3_bytes().unwrap_or(64 << 20)).clamp(256 << 20, 4 << 30)
}

fn best_of(reps: usize, min_time: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut n = 0;
    while n < reps || (start.elapsed() < min_time && n < 100 * reps) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    best
}

fn thread_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().expect("thread pool")
}

/// Deterministic pseudo-random inputs (no dependency on `rand`).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
}

/// Random delta-rule inputs for `t` tokens: q, k, v in (-1, 1), exp(g) in (0.5, 1), beta in (0, 1).
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    o: Vec<f32>,
}

impl Inputs {
    fn new(dims: &ModelDims, t: usize, seed: u64) -> Self {
        let mut r = Lcg(seed);
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        Inputs {
            q: r.vec(t * hk * k, -1.0, 1.0),
            k: r.vec(t * hk * k, -1.0, 1.0),
            v: r.vec(t * hv * v, -1.0, 1.0),
            g: r.vec(t * hv, 0.5, 1.0).into_iter().map(f32::ln).collect(),
            beta: r.vec(t * hv, 0.0, 1.0),
            o: vec![0.0; t * hv * v],
        }
    }

    /// Views of tokens `a..b`.
    fn io(&mut self, dims: &ModelDims, a: usize, b: usize) -> DeltaIo<'_> {
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let t = b - a;
        DeltaIo {
            q: TensorRef::from_slice(&self.q[a * hk * k..b * hk * k], &[t, hk, k]).expect("q"),
            k: TensorRef::from_slice(&self.k[a * hk * k..b * hk * k], &[t, hk, k]).expect("k"),
            v: TensorRef::from_slice(&self.v[a * hv * v..b * hv * v], &[t, hv, v]).expect("v"),
            g: TensorRef::from_slice(&self.g[a * hv..b * hv], &[t, hv]).expect("g"),
            beta: TensorRef::from_slice(&self.beta[a * hv..b * hv], &[t, hv]).expect("beta"),
            o: TensorMut::from_slice(&mut self.o[a * hv * v..b * hv * v], &[t, hv, v]).expect("o"),
            params: DeltaParams::new(dims),
        }
    }
}

/// Machine ceiling: an `n x n x n` f32 GEMM through the `gemm` crate on `threads` threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmCeiling {
    /// Matrix size.
    pub n: usize,
    /// Threads.
    pub threads: usize,
    /// Best GFLOP/s.
    pub gflops: f64,
}

/// Measures the f32 GEMM rate (`2 n^3` FLOP per product, best of several).
pub fn measure_gemm_ceiling(threads: usize, n: usize) -> GemmCeiling {
    let mut g = GemmBench::new(threads, n);
    let secs = best_of(3, Duration::from_millis(1500), || g.run());
    GemmCeiling { n, threads, gflops: g.flop() / secs / 1e9 }
}

/// Machine ceiling: streaming over `bytes` bytes on `threads` threads, counting read + write bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemcpyCeiling {
    /// Bytes per run.
    pub bytes: usize,
    /// Best GB/s (read + write).
    pub gbps: f64,
}

/// Measures copy bandwidth over `bytes` bytes (read + write counted).
pub fn measure_memcpy_ceiling(threads: usize, bytes: usize) -> MemcpyCeiling {
    let mut c = CopyBench::new(threads, bytes);
    let secs = best_of(3, Duration::from_millis(1500), || c.run());
    MemcpyCeiling { bytes, gbps: c.bytes_moved() / secs / 1e9 }
}

/// Measures in-place read-modify-write bandwidth over `bytes` bytes (read + write counted): the decode's ceiling.
pub fn measure_rmw_ceiling(threads: usize, bytes: usize) -> MemcpyCeiling {
    let mut c = RmwBench::new(threads, bytes);
    let secs = best_of(3, Duration::from_millis(1500), || c.run());
    MemcpyCeiling { bytes, gbps: c.bytes_moved() / secs / 1e9 }
}

/// One extend of `t` tokens (one sequence, no initial state... then with it) on a pool.
pub struct ExtendBench {
    d: CpuDispatcher<KMajor>,
    dims: ModelDims,
    pool: PoolOf<CpuDispatcher<KMajor>>,
    slot: Slot,
    x: Inputs,
    t: usize,
}

impl ExtendBench {
    /// Sets up an extend of `t` tokens of one sequence on `threads` threads.
    pub fn new(dims: ModelDims, t: usize, threads: usize, state: DType) -> Result<Self> {
        let d = CpuDispatcher::<KMajor>::with_threads(threads)?;
        let pool = d.new_pool(PoolConfig::new(1, 1, dims).with_state_dtype(state))?;
        let slot = pool.alloc(1)?[0];
        Ok(ExtendBench { d, dims, pool, slot, x: Inputs::new(&dims, t, 11), t })
    }

    /// Runs the extend once (from the slot's state, as a continued prefill does).
    pub fn run(&mut self) {
        self.run_chunked(self.t);
    }

    /// Runs the same tokens as consecutive extends of `chunk` tokens.
    pub fn run_chunked(&mut self, chunk: usize) {
        let mut a = 0;
        while a < self.t {
            let b = (a + chunk).min(self.t);
            let batch = ExtendBatch::new(&self.pool, &[0, b - a], &[self.slot], &[a > 0]).expect("batch");
            let io = self.x.io(&self.dims, a, b);
            self.d.extend(&mut self.pool, 0, &batch, io).expect("extend");
            a = b;
        }
    }
}

/// Decode (or verify) over a pool of as many layers as it takes to cycle
/// through more memory than the L3, as a multi-layer model does.
pub struct DecodeBench {
    d: CpuDispatcher<KMajor>,
    dims: ModelDims,
    pool: PoolOf<CpuDispatcher<KMajor>>,
    slots: Vec<Slot>,
    layers: usize,
    next: usize,
    x: Inputs,
    draft: usize,
}

impl DecodeBench {
    /// `batch` requests, state dtype `state`, `draft` > 0 adds speculative buffers of D drafts;
    /// layers chosen so the main states span at least `bytes`.
    pub fn new(dims: ModelDims, batch: usize, state: DType, draft: usize, threads: usize, bytes: usize) -> Result<Self> {
        Self::speculative(dims, batch, state, (draft, SpecMode::Scratch), threads, bytes)
    }

    /// As [`new`](Self::new) with the speculative buffers of `(draft, mode)`.
    pub fn speculative(
        dims: ModelDims,
        batch: usize,
        state: DType,
        (draft, mode): (usize, SpecMode),
        threads: usize,
        bytes: usize,
    ) -> Result<Self> {
        let d = CpuDispatcher::<KMajor>::with_threads(threads)?;
        let per_layer = batch * dims.state_elems() * state.size();
        let layers = bytes.div_ceil(per_layer).max(2);
        let mut cfg = PoolConfig::new(layers, batch, dims).with_state_dtype(state);
        if draft > 0 {
            cfg = cfg.with_speculative(draft).with_spec_mode(mode);
        }
        let mut pool = d.new_pool(cfg)?;
        let slots = pool.alloc(batch)?;
        let x = Inputs::new(&dims, batch * draft.max(1), 5);
        // non-zero states
        let mut r = Lcg(3);
        let st = HostState::from_f32(
            layers,
            dims,
            state,
            DType::F32,
            &r.vec(layers * dims.state_elems(), -0.1, 0.1),
            &vec![0.0; layers * dims.conv_elems()],
        )?;
        for s in &slots {
            pool.import(*s, &st)?;
        }
        Ok(DecodeBench { d, dims, pool, slots, layers, next: 0, x, draft })
    }

    /// Layers the bench cycles through.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// One decode step of the next layer.
    pub fn decode_step(&mut self) {
        let batch = DecodeBatch::new(&self.pool, &self.slots).expect("batch");
        let n = self.slots.len();
        let io = self.x.io(&self.dims, 0, n);
        self.d.decode(&mut self.pool, self.next, &batch, io).expect("decode");
        self.next = (self.next + 1) % self.layers;
    }

    /// One verify of D drafts (a chain) on the next layer.
    pub fn verify_step(&mut self) {
        let batch = VerifyBatch::chain(&self.pool, &self.slots).expect("batch");
        let n = self.slots.len() * self.draft;
        let io = self.x.io(&self.dims, 0, n);
        self.d.verify(&mut self.pool, self.next, &batch, io).expect("verify");
        self.next = (self.next + 1) % self.layers;
    }
}

/// Extend throughput against the GEMM ceiling timed in the same rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtendResult {
    /// Tokens per extend.
    pub tokens: usize,
    /// Threads.
    pub threads: usize,
    /// Best seconds per extend.
    pub secs: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// GFLOP/s by [`extend_flop_per_token_head`].
    pub gflops: f64,
    /// The GEMM ceiling of the same rounds (GFLOP/s).
    pub gemm_gflops: f64,
}

/// Times one extend of each length in `ts` (f32 state) and the GEMM ceiling, interleaved.
pub fn bench_extend(dims: ModelDims, ts: &[usize], threads: usize) -> Result<(GemmCeiling, Vec<ExtendResult>)> {
    let mut gemm = GemmBench::new(threads, 2048);
    let mut benches = ts.iter().map(|&t| ExtendBench::new(dims, t, threads, DType::F32)).collect::<Result<Vec<_>>>()?;
    let secs = interleaved(ts.len() + 1, 3, Duration::from_millis(1500), |i| match i {
        0 => gemm.run(),
        i => benches[i - 1].run(),
    });
    let g = GemmCeiling { n: gemm.n(), threads, gflops: gemm.flop() / secs[0] / 1e9 };
    let res = ts
        .iter()
        .zip(&secs[1..])
        .map(|(&t, &secs)| {
            let flop = t as f64 * dims.num_v_heads as f64 * extend_flop_per_token_head(dims.head_k_dim, dims.head_v_dim);
            ExtendResult { tokens: t, threads, secs, tokens_per_s: t as f64 / secs, gflops: flop / secs / 1e9, gemm_gflops: g.gflops }
        })
        .collect();
    Ok((g, res))
}

/// Chunked prefill vs one extend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkedResult {
    /// Total tokens.
    pub tokens: usize,
    /// Tokens per chunk.
    pub chunk: usize,
    /// Seconds of one extend.
    pub one_secs: f64,
    /// Seconds of the chunked extends.
    pub chunked_secs: f64,
    /// `chunked_secs / one_secs` (target <= 1.03).
    pub ratio: f64,
}

/// Times `total` tokens in `chunk`-token extends against one extend, interleaved.
pub fn bench_chunked(dims: ModelDims, total: usize, chunk: usize, threads: usize) -> Result<ChunkedResult> {
    let mut b = ExtendBench::new(dims, total, threads, DType::F32)?;
    let s = interleaved(2, 3, Duration::from_millis(1000), |i| if i == 0 { b.run() } else { b.run_chunked(chunk) });
    Ok(ChunkedResult { tokens: total, chunk, one_secs: s[0], chunked_secs: s[1], ratio: s[1] / s[0] })
}

/// Decode throughput against the in-place read-modify-write ceiling timed in the same rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeResult {
    /// Requests per step.
    pub batch: usize,
    /// State dtype.
    pub state: DType,
    /// Layers cycled through.
    pub layers: usize,
    /// Seconds per step (one layer).
    pub secs_per_step: f64,
    /// Tokens per second of one layer (`batch / secs_per_step`).
    pub tokens_per_s: f64,
    /// GB/s of state read + write.
    pub gbps: f64,
    /// The read-modify-write ceiling of the same rounds (GB/s, read + write).
    pub rmw_gbps: f64,
}

/// Times decode steps of `batch` requests with an f32 and a bf16 state, each
/// cycling through more memory than the L3, and the in-place
/// read-modify-write ceiling over as much memory, interleaved.
pub fn bench_decode(dims: ModelDims, batch: usize, threads: usize) -> Result<[DecodeResult; 2]> {
    let mut rmw = RmwBench::new(threads, cycle_bytes());
    let states = [DType::F32, DType::BF16];
    let mut b = states.iter().map(|&st| DecodeBench::new(dims, batch, st, 0, threads, cycle_bytes())).collect::<Result<Vec<_>>>()?;
    let secs = interleaved(3, 5, Duration::from_millis(1500), |i| match i {
        0 => rmw.run(),
        i => {
            let b = &mut b[i - 1];
            (0..b.layers()).for_each(|_| b.decode_step())
        }
    });
    let rmw_gbps = rmw.bytes_moved() / secs[0] / 1e9;
    Ok([0, 1].map(|i| {
        let (layers, st) = (b[i].layers(), states[i]);
        let s = secs[i + 1] / layers as f64;
        let bytes = 2.0 * (batch * dims.state_elems() * st.size()) as f64;
        DecodeResult { batch, state: st, layers, secs_per_step: s, tokens_per_s: batch as f64 / s, gbps: bytes / s / 1e9, rmw_gbps }
    }))
}

/// Verify of D drafts vs D decode steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerifyResult {
    /// Requests.
    pub batch: usize,
    /// Drafts D.
    pub draft: usize,
    /// Seconds of one verify (one layer).
    pub verify_secs: f64,
    /// Seconds of D decode steps (one layer).
    pub decode_secs: f64,
    /// `verify_secs / decode_secs` (target <= 0.65 for D = 4).
    pub ratio: f64,
}

/// Times a chain verify of `draft` tokens against `draft` sequential decode steps (f32 state), interleaved.
pub fn bench_verify(dims: ModelDims, batch: usize, draft: usize, threads: usize) -> Result<VerifyResult> {
    let mut b = DecodeBench::new(dims, batch, DType::F32, draft, threads, cycle_bytes())?;
    let layers = b.layers();
    let s = interleaved(2, 3, Duration::from_millis(1000), |i| {
        if i == 0 {
            (0..layers).for_each(|_| b.verify_step())
        } else {
            (0..layers * draft).for_each(|_| b.decode_step())
        }
    });
    let (v, d) = (s[0] / layers as f64, s[1] / layers as f64);
    Ok(VerifyResult { batch, draft, verify_secs: v, decode_secs: d, ratio: v / d })
}

/// Everything the issue asks for, as one report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Threads.
    pub threads: usize,
    /// Model shape of every bench.
    pub dims: ModelDims,
    /// GEMM ceiling (the extend group's rounds).
    pub gemm: GemmCeiling,
    /// Extend at each length.
    pub extend: Vec<ExtendResult>,
    /// Speculative verify + commit in both modes against D decodes.
    pub spec: Vec<SpecResult>,
    /// Decode at each batch and state dtype.
    pub decode: Vec<DecodeResult>,
    /// Verify D = 4.
    pub verify: Vec<VerifyResult>,
    /// Chunked prefill.
    pub chunked: Option<ChunkedResult>,
    /// Whole-layer steps with the share of each kernel.
    pub layer: Vec<LayerResult>,
    /// A short prefill step against one long extend (whole layer, per-token rates).
    pub short_vs_long: Option<LayerPair>,
    /// A mixed step in one call against its prefill and decode parts as two calls.
    pub mixed: Option<LayerPair>,
}

/// Which benches [`run_report`] runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Threads.
    pub threads: usize,
    /// Model shape.
    pub dims: ModelDims,
    /// Extend lengths.
    pub extend_tokens: Vec<usize>,
    /// Decode batches.
    pub decode_batches: Vec<usize>,
    /// Verify batches (D = 4).
    pub verify_batches: Vec<usize>,
    /// `(total, chunk)` of the chunked-prefill comparison.
    pub chunked: Option<(usize, usize)>,
    /// Whole-layer steps.
    pub layer_steps: Vec<LayerStep>,
    /// `(short, long)` whole-layer prefill steps compared by per-token rate.
    pub short_vs_long: Option<(LayerStep, LayerStep)>,
    /// A mixed step (run as one call and as two).
    pub mixed: Option<LayerStep>,
}

impl Default for ReportOptions {
    /// The issues' set: Qwen3.5-35B-A3B shape, 2 threads, extend 512/4096/32768,
    /// decode 1/8/32/64 (f32 and bf16 state), verify D = 4, 32768 in 2048-token
    /// chunks; whole layers: prefill steps of 128, 512, 2048 tokens over 1, 4,
    /// 16 sequences, decode 1/8/32/64, verify D = 4 + commit, a mixed step.
    fn default() -> Self {
        let mut layer_steps = Vec::new();
        for tokens in [128, 512, 2048] {
            for seqs in [1, 4, 16] {
                layer_steps.push(LayerStep::Extend { seqs, tokens });
            }
        }
        layer_steps.extend([1, 8, 32, 64].map(|batch| LayerStep::Decode { batch }));
        layer_steps.extend([1, 8].map(|batch| LayerStep::Verify { batch, draft: 4 }));
        ReportOptions {
            threads: 2,
            dims: qwen35_35b_dims(),
            extend_tokens: vec![512, 4096, 32768],
            decode_batches: vec![1, 8, 32, 64],
            verify_batches: vec![1, 8],
            chunked: Some((32768, 2048)),
            layer_steps,
            short_vs_long: Some((LayerStep::Extend { seqs: 4, tokens: 128 }, LayerStep::Extend { seqs: 1, tokens: 4096 })),
            mixed: Some(LayerStep::Mixed { prefill: 2, chunk: 128, decode: 16 }),
        }
    }
}

impl ReportOptions {
    /// Smaller sizes and fewer shapes (a quick look, not the reported figures).
    pub fn quick() -> Self {
        ReportOptions {
            extend_tokens: vec![512, 2048],
            decode_batches: vec![1, 8],
            verify_batches: vec![8],
            chunked: Some((4096, 1024)),
            layer_steps: vec![
                LayerStep::Extend { seqs: 1, tokens: 512 },
                LayerStep::Extend { seqs: 4, tokens: 128 },
                LayerStep::Decode { batch: 8 },
                LayerStep::Verify { batch: 8, draft: 4 },
            ],
            short_vs_long: Some((LayerStep::Extend { seqs: 4, tokens: 128 }, LayerStep::Extend { seqs: 1, tokens: 2048 })),
            ..Self::default()
        }
    }
}

/// Runs the benches of `opts`, each group with its ceiling in the same rounds, in one process.
pub fn run_report(opts: &ReportOptions) -> Result<Report> {
    let (dims, th) = (opts.dims, opts.threads);
    let (gemm, extend) = bench_extend(dims, &opts.extend_tokens, th)?;
    let mut decode = Vec::new();
    for &b in &opts.decode_batches {
        decode.extend(bench_decode(dims, b, th)?);
    }
    let verify = opts.verify_batches.iter().map(|&b| bench_verify(dims, b, 4, th)).collect::<Result<Vec<_>>>()?;
    let spec = opts.verify_batches.iter().map(|&b| bench_spec(dims, b, 4, th)).collect::<Result<Vec<_>>>()?;
    let chunked = opts.chunked.map(|(t, c)| bench_chunked(dims, t, c, th)).transpose()?;
    let layer = opts.layer_steps.iter().map(|&s| bench_layer(dims, s, th)).collect::<Result<Vec<_>>>()?;
    let short_vs_long = opts.short_vs_long.map(|(a, b)| bench_layer_pair(dims, (a, Part::Layer), (b, Part::Layer), th)).transpose()?;
    let mixed = opts.mixed.map(|m| bench_layer_pair(dims, (m, Part::Layer), (m, Part::Split), th)).transpose()?;
    Ok(Report { threads: th, dims, gemm, extend, spec, decode, verify, chunked, layer, short_vs_long, mixed })
}

impl std::fmt::Display for Report {
    /// Markdown tables with the targets of the issues.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "every ratio compares runs interleaved in the same rounds (A B A B), {} threads", self.threads)?;
        writeln!(f)?;
        writeln!(f, "| kernel bench | result | vs ceiling (same rounds) | target |")?;
        writeln!(f, "|---|---|---|---|")?;
        for e in &self.extend {
            writeln!(
                f,
                "| extend T={} | {:.0} tok/s, {:.1} GFLOP/s | {:.2} of GEMM ({:.1} GFLOP/s) | >= 0.85 |",
                e.tokens,
                e.tokens_per_s,
                e.gflops,
                e.gflops / e.gemm_gflops,
                e.gemm_gflops
            )?;
        }
        for d in &self.decode {
            let f32_tps = self.decode.iter().find(|x| x.batch == d.batch && x.state == DType::F32).map(|x| x.tokens_per_s);
            let (vs, target) = match d.state {
                DType::F32 => (format!("{:.2} of in-place RMW ({:.1} GB/s)", d.gbps / d.rmw_gbps, d.rmw_gbps), ">= 0.90"),
                _ => (format!("{:.2}x f32 tok/s", d.tokens_per_s / f32_tps.unwrap_or(f64::NAN)), ">= 1.6x"),
            };
            writeln!(
                f,
                "| decode batch {} {} state ({} layers) | {:.0} tok/s/layer, {:.1} GB/s | {} | {} |",
                d.batch, d.state, d.layers, d.tokens_per_s, d.gbps, vs, target
            )?;
        }
        for v in &self.verify {
            writeln!(
                f,
                "| verify D={} batch {} | {:.3} ms vs {:.3} ms for {} decodes | {:.2}x | <= 0.65x |",
                v.draft,
                v.batch,
                v.verify_secs * 1e3,
                v.decode_secs * 1e3,
                v.draft,
                v.ratio
            )?;
        }
        for x in &self.spec {
            x.rows(f)?;
        }
        if let Some(c) = &self.chunked {
            writeln!(
                f,
                "| {} tokens in {}-token chunks | {:.3} s vs {:.3} s one extend | {:.3}x | <= 1.03x |",
                c.tokens, c.chunk, c.chunked_secs, c.one_secs, c.ratio
            )?;
        }
        if !self.layer.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "| whole layer (conv + gate + delta rule) | tok/s/layer | conv | gate | delta rule | rest | conv + gate | target |"
            )?;
            writeln!(f, "|---|---|---|---|---|---|---|---|")?;
            for l in &self.layer {
                let pc = |x: f64| format!("{:.1}%", 100.0 * x / l.secs);
                let rest = l.secs - l.conv_secs - l.gate_secs - l.delta_secs;
                let target = match l.step {
                    LayerStep::Extend { .. } | LayerStep::Mixed { .. } => "<= 10%",
                    LayerStep::Decode { .. } => "<= 15%",
                    LayerStep::Verify { .. } => "",
                };
                writeln!(
                    f,
                    "| {} ({} layers) | {:.0} | {} | {} | {} | {} | {} | {} |",
                    l.step,
                    l.layers,
                    l.tokens_per_s(),
                    pc(l.conv_secs),
                    pc(l.gate_secs),
                    pc(l.delta_secs),
                    pc(rest),
                    pc(l.conv_secs + l.gate_secs),
                    target
                )?;
            }
        }
        if let Some(p) = &self.short_vs_long {
            writeln!(f)?;
            writeln!(
                f,
                "whole layer, per-token rate: {} {:.0} tok/s vs {} {:.0} tok/s: {:.2}x (target >= 0.7x)",
                p.a.0,
                p.a.0.tokens() as f64 / p.a_secs,
                p.b.0,
                p.b.0.tokens() as f64 / p.b_secs,
                p.rate_ratio()
            )?;
        }
        if let Some(p) = &self.mixed {
            writeln!(
                f,
                "{} in one extend call: {:.3} ms vs {:.3} ms as a prefill extend + a decode: {:.2}x",
                p.a.0,
                p.a_secs * 1e3,
                p.b_secs * 1e3,
                p.time_ratio()
            )?;
        }
        Ok(())
    }
}
