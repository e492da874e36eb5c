//! `deltanet run`: a synthetic serving workload driven through the pool and
//! the layer forward exactly as an engine drives them (requests arriving over
//! time, chunked prefill under a per-step token budget, prefix-cache hits
//! restored from snapshots, decode, speculative verify and commit with random
//! acceptance over chains and trees, slots freed and reused), with a sample of
//! every phase's outputs and final states checked against the f64 oracle.

use crate::models::ModelPreset;
use crate::synth::{inputs_for, layer_oracle, mix, SynthWeights};
use deltanet::backend::{Backend, BackendVisitor};
use deltanet_core::oracle::{error_ratio, worst_ratio};
use deltanet_core::{
    commit, forward_decode, forward_extend, forward_verify, CommitBatch, DType, DecodeBatch, DeltaParams, DeviceTensor, Error, ExtendBatch,
    KernelDispatcher, LayerInput, LayerWeights, LayerWorkspace, MambaStatePool, PoolConfig, PoolOf, Result, Slot, Snapshot, SpecMode,
    VerifyBatch,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What `deltanet run` serves.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Model shape.
    pub model: ModelPreset,
    /// Requests served in total.
    pub requests: usize,
    /// Prompt tokens per request.
    pub prompt_len: usize,
    /// Prefill token budget per engine step.
    pub chunk: usize,
    /// Tokens generated per request (decode steps and accepted drafts).
    pub decode: usize,
    /// Draft tokens per speculative round (0: no speculative decoding).
    pub draft: usize,
    /// What the pool keeps between verify and commit.
    pub spec_mode: SpecMode,
    /// Requests running at once (slots in use, not counting prefix-cache slots).
    pub max_running: usize,
    /// Recurrent-state dtype.
    pub state_dtype: DType,
    /// Seed of everything random.
    pub seed: u64,
    /// Requests whose outputs are checked against the oracle.
    pub check_requests: usize,
    /// Show a progress bar.
    pub progress: bool,
}

/// One row of the summary.
#[derive(Debug, Clone, Default)]
pub struct PhaseStats {
    /// Tokens pushed through all layers.
    pub tokens: usize,
    /// Time in the forward calls.
    pub time: Duration,
    /// Worst error ratio among the checked outputs of this phase.
    pub worst_ratio: f64,
    /// Checked (request, layer) pairs.
    pub checks: usize,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Backend name.
    pub backend: String,
    /// Prefill, decode, verify (+commit), and final-state rows.
    pub phases: Vec<(&'static str, PhaseStats)>,
    /// Tolerance every ratio is held to.
    pub tolerance: f64,
    /// Pool bytes.
    pub pool_bytes: usize,
    /// Bytes of the pool's speculative buffers (0 without speculative decoding).
    pub spec_bytes: usize,
    /// Of those, bytes per request (all layers).
    pub spec_bytes_per_request: usize,
    /// Most slots in use at once.
    pub peak_slots: usize,
    /// Slots in the pool.
    pub capacity: usize,
    /// Requests that restored a prefix snapshot.
    pub prefix_hits: usize,
}

impl RunReport {
    /// Whether every check met the tolerance.
    pub fn passed(&self) -> bool {
        self.phases.iter().all(|(_, p)| p.worst_ratio <= self.tolerance && p.worst_ratio.is_finite())
    }
}

/// Runs the workload on `backend`.
pub fn run(backend: &Backend, cfg: &RunConfig) -> Result<RunReport> {
    backend.visit(RunVisit(cfg))
}

struct RunVisit<'a>(&'a RunConfig);

impl BackendVisitor for RunVisit<'_> {
    type Output = Result<RunReport>;
    fn visit<D: KernelDispatcher>(self, d: &D) -> Result<RunReport> {
        Engine::new(d, self.0)?.serve()
    }
}

/// A request as the engine tracks it.
struct Request {
    id: usize,
    slot: Option<Slot>,
    prompt: Vec<u64>,
    /// Tokens whose state is in the slot.
    history: Vec<u64>,
    generated: usize,
    checked: bool,
    /// Recorded outputs of checked layers: (phase, layer, position in history, `[HV*V]`).
    outputs: Vec<(usize, usize, usize, Vec<f32>)>,
    /// Prefix group (requests sharing the first `prefix` prompt tokens).
    group: usize,
}

const PREFILL: usize = 0;
const DECODE: usize = 1;
const VERIFY: usize = 2;
const STATE: usize = 3;

struct Engine<'d, D: KernelDispatcher> {
    d: &'d D,
    cfg: &'d RunConfig,
    pool: PoolOf<D>,
    ws: LayerWorkspace<D::Memory>,
    weights: Vec<[DeviceTensor<D::Memory>; 3]>,
    params: DeltaParams,
    check_layers: Vec<usize>,
    stats: [PhaseStats; 4],
    /// Prefix cache: group -> (tokens covered, slot).
    cache: HashMap<usize, (usize, Slot)>,
    prefix: usize,
    prefix_hits: usize,
    peak: usize,
    rng: ChaCha8Rng,
}

impl<'d, D: KernelDispatcher> Engine<'d, D> {
    fn new(d: &'d D, cfg: &'d RunConfig) -> Result<Self> {
        let dims = cfg.model.dims;
        if cfg.requests == 0 || cfg.prompt_len == 0 || cfg.chunk == 0 || cfg.max_running == 0 {
            return Err(Error::InvalidConfig("requests, prompt length, chunk and max running must be positive".into()));
        }
        let groups = cfg.requests.div_ceil(2);
        let mut pc = PoolConfig::new(cfg.model.layers, cfg.max_running + groups, dims).with_state_dtype(cfg.state_dtype);
        if cfg.draft > 0 {
            pc = pc.with_speculative(cfg.draft).with_spec_mode(cfg.spec_mode);
        }
        let pool = d.new_pool(pc)?;
        let mem = d.memory();
        let weights = (0..cfg.model.layers)
            .map(|l| {
                let w = SynthWeights::new(&dims, cfg.seed, l);
                Ok([
                    DeviceTensor::from_f32(mem, DType::F32, &[dims.num_v_heads], &w.a_log)?,
                    DeviceTensor::from_f32(mem, DType::F32, &[dims.num_v_heads], &w.dt_bias)?,
                    DeviceTensor::from_f32(mem, DType::F32, &[dims.conv_dim(), dims.conv_width], &w.conv_weight)?,
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        let mut check_layers = vec![0, cfg.model.layers - 1];
        check_layers.dedup();
        Ok(Engine {
            d,
            cfg,
            pool,
            ws: LayerWorkspace::new(mem.clone()),
            weights,
            params: DeltaParams::new(&dims),
            check_layers,
            stats: Default::default(),
            cache: HashMap::new(),
            // a prefix that ends mid-chunk, so snapshots are taken inside a chunk
            prefix: (cfg.prompt_len / 2).max(1),
            prefix_hits: 0,
            peak: 0,
            rng: ChaCha8Rng::seed_from_u64(mix(&[cfg.seed, 0xe9])),
        })
    }

    fn make_requests(&self) -> Vec<Request> {
        let cfg = self.cfg;
        // Requests come in pairs sharing a prefix; checked ones are spread over the run.
        let stride = (cfg.requests / cfg.check_requests.max(1)).max(1);
        (0..cfg.requests)
            .map(|id| {
                let group = id / 2;
                let prompt = (0..cfg.prompt_len)
                    .map(|p| if p < self.prefix { mix(&[1, group as u64, p as u64]) } else { mix(&[2, id as u64, p as u64]) })
                    .collect();
                Request {
                    id,
                    slot: None,
                    prompt,
                    history: Vec::new(),
                    generated: 0,
                    checked: cfg.check_requests > 0 && id % stride == stride - 1 && id / stride < cfg.check_requests,
                    outputs: Vec::new(),
                    group,
                }
            })
            .collect()
    }

    fn serve(mut self) -> Result<RunReport> {
        let cfg = self.cfg;
        let mut pending: Vec<Request> = self.make_requests();
        pending.reverse();
        let mut running: Vec<Request> = Vec::new();
        let mut done: Vec<Request> = Vec::new();
        let total_work = cfg.requests * (cfg.prompt_len + cfg.decode);
        let bar = progress_bar(cfg.progress, total_work as u64);
        let mut step = 0usize;
        while !pending.is_empty() || !running.is_empty() {
            // admit: one new request every step while there is room
            if running.len() < cfg.max_running {
                if let Some(mut r) = pending.pop() {
                    self.admit(&mut r)?;
                    running.push(r);
                }
            }
            self.peak = self.peak.max(self.pool.capacity() - self.pool.free_count());
            let before: usize = running.iter().map(|r| r.history.len()).sum();
            if running.iter().any(|r| r.history.len() < r.prompt.len()) {
                self.prefill_step(&mut running)?;
            }
            let ready: Vec<usize> = (0..running.len()).filter(|&i| running[i].history.len() >= running[i].prompt.len()).collect();
            if !ready.is_empty() {
                if cfg.draft > 0 && step % 2 == 1 {
                    self.spec_step(&mut running, &ready, step)?;
                } else {
                    self.decode_step(&mut running, &ready)?;
                }
            }
            let after: usize = running.iter().map(|r| r.history.len()).sum();
            bar.inc((after - before) as u64);
            // finish
            let mut i = 0;
            while i < running.len() {
                if running[i].generated >= cfg.decode && running[i].history.len() >= running[i].prompt.len() {
                    let mut r = running.swap_remove(i);
                    self.finish(&mut r)?;
                    done.push(r);
                } else {
                    i += 1;
                }
            }
            step += 1;
        }
        bar.finish_and_clear();
        let cached: Vec<Slot> = self.cache.values().map(|&(_, s)| s).collect();
        // The pool refuses an empty batch; a run with no prefix cache hits has none to free.
        if !cached.is_empty() {
            self.pool.free(&cached)?;
        }
        for r in done.iter().filter(|r| r.checked) {
            self.check(r);
        }
        let tolerance = deltanet_core::tolerance::serve(cfg.state_dtype);
        let [p, d, v, s] = self.stats;
        let mut phases = vec![("prefill", p), ("decode", d)];
        if cfg.draft > 0 {
            phases.push(("verify+commit", v));
        }
        phases.push(("final state", s));
        Ok(RunReport {
            backend: self.d.capabilities().backend.clone(),
            phases,
            tolerance,
            pool_bytes: self.pool.bytes(),
            spec_bytes: self.pool.geometry().config.buffer_bytes().map_or(0, |b| b.scratch + b.windows),
            spec_bytes_per_request: self.pool.geometry().config.spec_bytes_per_slot(),
            peak_slots: self.peak,
            capacity: self.pool.capacity(),
            prefix_hits: self.prefix_hits,
        })
    }

    fn admit(&mut self, r: &mut Request) -> Result<()> {
        let slot = self.pool.alloc(1)?[0];
        r.slot = Some(slot);
        if let Some(&(covered, src)) = self.cache.get(&r.group) {
            // prefix-cache hit: restore the snapshot and skip those tokens
            self.pool.copy(src, slot)?;
            r.history = r.prompt[..covered].to_vec();
            self.prefix_hits += 1;
        }
        Ok(())
    }

    fn finish(&mut self, r: &mut Request) -> Result<()> {
        let slot = r.slot.take().expect("running request has a slot");
        if r.checked {
            let st = self.pool.export(slot)?;
            let state = st.temporal_f32();
            let per = self.cfg.model.dims.state_elems();
            for &l in &self.check_layers {
                r.outputs.push((STATE, l, usize::MAX, state[l * per..(l + 1) * per].to_vec()));
            }
        }
        self.pool.free(&[slot])
    }

    /// Runs one layer-forward pass over all layers for `keys` (packed), calling
    /// `fwd` per layer, and returns the outputs of the checked layers.
    fn run_layers(
        &mut self,
        keys: &[u64],
        phase: usize,
        mut fwd: impl FnMut(
            &D,
            &mut PoolOf<D>,
            usize,
            &LayerWeights<'_>,
            &LayerInput<'_>,
            DeltaParams,
            &mut LayerWorkspace<D::Memory>,
            &mut DeviceTensor<D::Memory>,
        ) -> Result<()>,
    ) -> Result<Vec<(usize, Vec<f32>)>> {
        let dims = self.cfg.model.dims;
        let t = keys.len();
        let mem = self.d.memory().clone();
        let mut out = DeviceTensor::zeros(&mem, DType::F32, &[t, dims.num_v_heads, dims.head_v_dim])?;
        let mut checked = Vec::new();
        for layer in 0..self.cfg.model.layers {
            let (qkv, a, b) = inputs_for(&dims, self.cfg.seed, layer, keys);
            let qkv = DeviceTensor::from_f32(&mem, DType::F32, &[t, dims.conv_dim()], &qkv)?;
            let a = DeviceTensor::from_f32(&mem, DType::F32, &[t, dims.num_v_heads], &a)?;
            let b = DeviceTensor::from_f32(&mem, DType::F32, &[t, dims.num_v_heads], &b)?;
            let [a_log, dt_bias, conv_w] = &self.weights[layer];
            let w = LayerWeights { a_log: a_log.view(), dt_bias: dt_bias.view(), conv_weight: conv_w.view(), conv_bias: None };
            let x = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
            let start = Instant::now();
            fwd(self.d, &mut self.pool, layer, &w, &x, self.params, &mut self.ws, &mut out)?;
            self.stats[phase].time += start.elapsed();
            if self.check_layers.contains(&layer) {
                checked.push((layer, out.to_f32()?));
            }
        }
        self.stats[phase].tokens += t;
        Ok(checked)
    }

    fn record(&self, r: &mut Request, phase: usize, outs: &[(usize, Vec<f32>)], row: usize, pos: usize) {
        if !r.checked {
            return;
        }
        let w = self.cfg.model.dims.num_v_heads * self.cfg.model.dims.head_v_dim;
        for (layer, o) in outs {
            r.outputs.push((phase, *layer, pos, o[row * w..(row + 1) * w].to_vec()));
        }
    }

    fn prefill_step(&mut self, running: &mut [Request]) -> Result<()> {
        let mut budget = self.cfg.chunk;
        let (mut cu, mut slots, mut init, mut keys, mut snaps, mut who) = (vec![0], vec![], vec![], vec![], vec![], vec![]);
        for (i, r) in running.iter().enumerate() {
            let start = r.history.len();
            if start >= r.prompt.len() || budget == 0 {
                continue;
            }
            let n = (r.prompt.len() - start).min(budget);
            budget -= n;
            // leader of a prefix group: snapshot where the shared prefix ends
            if r.id % 2 == 0
                && !self.cache.contains_key(&r.group)
                && start < self.prefix
                && self.prefix <= start + n
                && self.pool.free_count() > 0
            {
                let s = self.pool.alloc(1)?[0];
                snaps.push(Snapshot { seq: slots.len(), position: self.prefix - start, slot: s });
                self.cache.insert(r.group, (self.prefix, s));
            }
            slots.push(r.slot.expect("running"));
            init.push(start > 0);
            keys.extend_from_slice(&r.prompt[start..start + n]);
            cu.push(keys.len());
            who.push((i, start));
        }
        let batch = ExtendBatch::new(&self.pool, &cu, &slots, &init)?.with_snapshots(&self.pool, &snaps)?;
        let outs =
            self.run_layers(&keys, PREFILL, |d, p, l, w, x, prm, ws, o| forward_extend(d, p, l, &batch, w, x, prm, ws, o.view_mut()))?;
        for (seq, &(i, start)) in who.iter().enumerate() {
            let n = cu[seq + 1] - cu[seq];
            for j in 0..n {
                self.record(&mut running[i], PREFILL, &outs, cu[seq] + j, start + j);
            }
            let r = &mut running[i];
            r.history.extend_from_slice(&r.prompt[start..start + n]);
        }
        Ok(())
    }

    fn decode_step(&mut self, running: &mut [Request], ready: &[usize]) -> Result<()> {
        let slots: Vec<Slot> = ready.iter().map(|&i| running[i].slot.expect("running")).collect();
        let keys: Vec<u64> = ready.iter().map(|&i| mix(&[3, running[i].id as u64, running[i].history.len() as u64])).collect();
        let batch = DecodeBatch::new(&self.pool, &slots)?;
        let outs =
            self.run_layers(&keys, DECODE, |d, p, l, w, x, prm, ws, o| forward_decode(d, p, l, &batch, w, x, prm, ws, o.view_mut()))?;
        for (row, &i) in ready.iter().enumerate() {
            let pos = running[i].history.len();
            self.record(&mut running[i], DECODE, &outs, row, pos);
            running[i].history.push(keys[row]);
            running[i].generated += 1;
        }
        Ok(())
    }

    fn spec_step(&mut self, running: &mut [Request], ready: &[usize], step: usize) -> Result<()> {
        let dd = self.cfg.draft;
        let tree = step % 4 == 3;
        let slots: Vec<Slot> = ready.iter().map(|&i| running[i].slot.expect("running")).collect();
        let mut parents = Vec::new();
        let mut keys = Vec::new();
        for &i in ready {
            for t in 0..dd {
                let p = if tree && t > 0 { self.rng.gen_range(-1..t as i64) } else { t as i64 - 1 };
                parents.push(p);
                keys.push(mix(&[4, running[i].id as u64, running[i].history.len() as u64, t as u64, step as u64]));
            }
        }
        let batch = VerifyBatch::tree(&self.pool, &slots, &parents)?;
        let outs =
            self.run_layers(&keys, VERIFY, |d, p, l, w, x, prm, ws, o| forward_verify(d, p, l, &batch, w, x, prm, ws, o.view_mut()))?;
        let accepted: Vec<usize> = ready.iter().map(|_| self.rng.gen_range(0..dd)).collect();
        let cb = CommitBatch::new(&self.pool, &slots, &accepted.iter().map(|&a| Some(a)).collect::<Vec<_>>(), &[])?;
        let start = Instant::now();
        for layer in 0..self.cfg.model.layers {
            commit(self.d, &mut self.pool, layer, &cb)?;
        }
        self.stats[VERIFY].time += start.elapsed();
        for (n, &i) in ready.iter().enumerate() {
            // the accepted path: root -> ... -> accepted step
            let mut path = vec![accepted[n]];
            while let Some(p) = batch.parent(n, *path.last().expect("non-empty")) {
                path.push(p);
            }
            path.reverse();
            for &t in &path {
                let pos = running[i].history.len();
                self.record(&mut running[i], VERIFY, &outs, n * dd + t, pos);
                running[i].history.push(keys[n * dd + t]);
            }
            running[i].generated += path.len();
        }
        Ok(())
    }

    fn check(&mut self, r: &Request) {
        let dims = self.cfg.model.dims;
        let w = dims.num_v_heads * dims.head_v_dim;
        for &layer in &self.check_layers {
            let oracle = layer_oracle(&dims, self.cfg.seed, layer, &r.history);
            for phase in [PREFILL, DECODE, VERIFY, STATE] {
                let (mut got, mut want) = (Vec::new(), Vec::new());
                for (ph, l, pos, o) in &r.outputs {
                    if *ph != phase || *l != layer {
                        continue;
                    }
                    got.extend_from_slice(o);
                    if phase == STATE {
                        want.extend_from_slice(&oracle.state);
                    } else {
                        want.extend_from_slice(&oracle.o[pos * w..(pos + 1) * w]);
                    }
                }
                if !got.is_empty() {
                    let s = &mut self.stats[phase];
                    s.worst_ratio = worst_ratio(s.worst_ratio, error_ratio(&got, &want));
                    s.checks += 1;
                }
            }
        }
    }
}

fn progress_bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} serving [{bar:40}] {pos}/{len} tokens {elapsed}").expect("valid template"),
    );
    bar
}

/// Prints the summary table.
pub fn print_report(cfg: &RunConfig, rep: &RunReport) {
    let d = cfg.model.dims;
    println!(
        "model {} ({} GDN layers, HK {} HV {} K {} V {}), backend {}, state {}, {} threads",
        cfg.model.name,
        cfg.model.layers,
        d.num_k_heads,
        d.num_v_heads,
        d.head_k_dim,
        d.head_v_dim,
        rep.backend,
        cfg.state_dtype,
        rayon::current_num_threads()
    );
    println!(
        "{:<14} {:>8} {:>9} {:>11} {:>7} {:>12} {:>10}  ok",
        "phase", "tokens", "seconds", "tokens/s", "checks", "worst ratio", "tolerance"
    );
    for (name, p) in &rep.phases {
        let secs = p.time.as_secs_f64();
        let tps = if secs > 0.0 { format!("{:.0}", p.tokens as f64 / secs) } else { "-".into() };
        let ok = p.worst_ratio <= rep.tolerance && p.worst_ratio.is_finite();
        println!(
            "{:<14} {:>8} {:>9.3} {:>11} {:>7} {:>12.2e} {:>10.0e}  {}",
            name,
            p.tokens,
            secs,
            tps,
            p.checks,
            p.worst_ratio,
            rep.tolerance,
            if ok { "yes" } else { "NO" }
        );
    }
    println!(
        "pool {:.1} MiB, peak {} of {} slots in use, {} prefix-cache hits",
        rep.pool_bytes as f64 / (1024.0 * 1024.0),
        rep.peak_slots,
        rep.capacity,
        rep.prefix_hits
    );
    if cfg.draft > 0 {
        println!(
            "speculative buffers ({} mode, D = {}): {:.1} MiB, {:.1} KiB per request",
            cfg.spec_mode,
            cfg.draft,
            rep.spec_bytes as f64 / (1024.0 * 1024.0),
            rep.spec_bytes_per_request as f64 / 1024.0
        );
    }
}
