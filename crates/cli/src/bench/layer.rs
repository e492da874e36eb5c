//! Whole-layer benches at serving shapes: `forward_extend` / `forward_decode`
//! / `forward_verify` + `commit` (conv + gate + delta rule, core's one layer
//! forward) as an engine calls them step after step, cycling through enough
//! layers that the states come from memory, not the L3; and each of the
//! three kernels alone on the same shapes, timed in the same rounds, for the
//! share of the layer's time each one takes.

use super::timing::interleaved;
use super::{cycle_bytes, Lcg};
use deltanet_backend_cpu::CpuKMajor;
use deltanet_core::*;
use std::time::Duration;

/// One engine step of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerStep {
    /// A prefill step of `tokens` tokens split evenly over `seqs` sequences, each continuing its cached state.
    Extend {
        /// Sequences.
        seqs: usize,
        /// Tokens in the step (all sequences).
        tokens: usize,
    },
    /// One decode token for each of `batch` requests.
    Decode {
        /// Requests.
        batch: usize,
    },
    /// A chain verify of `draft` tokens for each of `batch` requests, then a commit.
    Verify {
        /// Requests.
        batch: usize,
        /// Draft tokens D.
        draft: usize,
    },
    /// One extend call carrying `prefill` sequences of `chunk` tokens and `decode` 1-token sequences.
    Mixed {
        /// Prefill sequences.
        prefill: usize,
        /// Tokens per prefill sequence.
        chunk: usize,
        /// 1-token sequences.
        decode: usize,
    },
}

impl LayerStep {
    /// Sequences (slots) in the step.
    pub fn seqs(&self) -> usize {
        match *self {
            LayerStep::Extend { seqs, .. } => seqs,
            LayerStep::Decode { batch } | LayerStep::Verify { batch, .. } => batch,
            LayerStep::Mixed { prefill, decode, .. } => prefill + decode,
        }
    }

    /// Tokens in the step.
    pub fn tokens(&self) -> usize {
        match *self {
            LayerStep::Extend { tokens, .. } => tokens,
            LayerStep::Decode { batch } => batch,
            LayerStep::Verify { batch, draft } => batch * draft,
            LayerStep::Mixed { prefill, chunk, decode } => prefill * chunk + decode,
        }
    }

    /// Sequence lengths of the step's batch (an extend's split evenly, the remainder on the first ones).
    fn lens(&self) -> Vec<usize> {
        match *self {
            LayerStep::Extend { seqs, tokens } => (0..seqs).map(|i| tokens / seqs + usize::from(i < tokens % seqs)).collect(),
            LayerStep::Decode { batch } => vec![1; batch],
            LayerStep::Verify { batch, draft } => vec![draft; batch],
            LayerStep::Mixed { prefill, chunk, decode } => [vec![chunk; prefill], vec![1; decode]].concat(),
        }
    }
}

impl std::fmt::Display for LayerStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            LayerStep::Extend { seqs, tokens } => write!(f, "extend {tokens} tok over {seqs} seq"),
            LayerStep::Decode { batch } => write!(f, "decode batch {batch}"),
            LayerStep::Verify { batch, draft } => write!(f, "verify D={draft} + commit, batch {batch}"),
            LayerStep::Mixed { prefill, chunk, decode } => write!(f, "mixed: {prefill} x {chunk} prefill + {decode} decode"),
        }
    }
}

/// The kernel a [`LayerBench`] runs (`Layer`: the whole forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// forward_extend / forward_decode / forward_verify + commit.
    Layer,
    /// The conv alone (extend / update / verify).
    Conv,
    /// The gate alone.
    Gate,
    /// The delta rule alone (extend / decode / verify).
    Delta,
    /// A mixed step's prefill sequences and decode sequences as two separate forwards.
    Split,
}

/// A layer's inputs, weights and outputs for one step shape, on a pool of
/// enough layers that one pass over them moves more memory than the L3.
pub struct LayerBench {
    d: CpuKMajor,
    dims: ModelDims,
    step: LayerStep,
    pool: PoolOf<CpuKMajor>,
    slots: Vec<Slot>,
    cu: Vec<usize>,
    layers: usize,
    next: usize,
    a_log: Vec<f32>,
    dt_bias: Vec<f32>,
    conv_w: Vec<f32>,
    conv_b: Vec<f32>,
    qkv: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    conv_out: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    o: Vec<f32>,
    ws: LayerWorkspace<HostMemory>,
}

impl LayerBench {
    /// Sets up `step` on `threads` threads, f32 state, with as many layers
    /// as it takes for their states to span `bytes` (at least 2).
    pub fn new(dims: ModelDims, step: LayerStep, threads: usize, bytes: usize) -> Result<Self> {
        let d = CpuKMajor::with_threads(threads)?;
        let n = step.seqs();
        let per_layer = n * dims.state_elems() * 4;
        let layers = bytes.div_ceil(per_layer).max(2);
        let mut cfg = PoolConfig::new(layers, n, dims);
        if let LayerStep::Verify { draft, .. } = step {
            cfg = cfg.with_speculative(draft);
        }
        let pool = d.new_pool(cfg)?;
        let slots = pool.alloc(n)?;
        let mut cu = vec![0];
        for l in step.lens() {
            cu.push(cu.last().copied().unwrap_or(0) + l);
        }
        let (t, hv, cd, w) = (step.tokens(), dims.num_v_heads, dims.conv_dim(), dims.conv_width);
        let mut r = Lcg(17);
        Ok(LayerBench {
            d,
            dims,
            step,
            pool,
            slots,
            cu,
            layers,
            next: 0,
            a_log: r.vec(hv, 0.0, 2.5),
            dt_bias: r.vec(hv, -1.0, 1.0),
            conv_w: r.vec(cd * w, -0.5, 0.5),
            conv_b: r.vec(cd, -0.1, 0.1),
            qkv: r.vec(t * cd, -1.0, 1.0),
            a: r.vec(t * hv, -2.0, 2.0),
            b: r.vec(t * hv, -2.0, 2.0),
            conv_out: vec![0.0; t * cd],
            g: vec![0.0; t * hv],
            beta: vec![0.0; t * hv],
            o: vec![0.0; t * hv * dims.head_v_dim],
            ws: LayerWorkspace::new(HostMemory),
        })
    }

    /// Layers cycled through.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The step.
    pub fn step(&self) -> LayerStep {
        self.step
    }

    /// Runs `part` once on the next layer.
    pub fn run(&mut self, part: Part) -> Result<()> {
        let layer = self.next;
        self.next = (self.next + 1) % self.layers;
        let (dims, t) = (self.dims, self.step.tokens());
        let (hv, cd, vd) = (dims.num_v_heads, dims.conv_dim(), dims.head_v_dim);
        let w = LayerWeights {
            a_log: TensorRef::from_slice(&self.a_log, &[hv])?,
            dt_bias: TensorRef::from_slice(&self.dt_bias, &[hv])?,
            conv_weight: TensorRef::from_slice(&self.conv_w, &[cd, dims.conv_width])?,
            conv_bias: Some(TensorRef::from_slice(&self.conv_b, &[cd])?),
        };
        // rows a..b of the step's inputs
        let input = |a: usize, b: usize| -> Result<LayerInput<'_>> {
            Ok(LayerInput {
                mixed_qkv: TensorRef::from_slice(&self.qkv[a * cd..b * cd], &[b - a, cd])?,
                a: TensorRef::from_slice(&self.a[a * hv..b * hv], &[b - a, hv])?,
                b: TensorRef::from_slice(&self.b[a * hv..b * hv], &[b - a, hv])?,
            })
        };
        let x = input(0, t)?;
        let params = DeltaParams::new(&dims);
        let (d, pool, slots) = (&self.d, &mut self.pool, &self.slots[..]);
        let init = vec![true; slots.len()];
        fn conv_io<'a>(x: &LayerInput<'a>, w: &LayerWeights<'a>, out: &'a mut [f32], t: usize, cd: usize) -> Result<ConvIo<'a>> {
            Ok(ConvIo { x: x.mixed_qkv, weight: w.conv_weight, bias: w.conv_bias, out: TensorMut::from_slice(out, &[t, cd])? })
        }
        match part {
            Part::Layer => {
                let out = TensorMut::from_slice(&mut self.o, &[t, hv, vd])?;
                match self.step {
                    LayerStep::Extend { .. } | LayerStep::Mixed { .. } => {
                        let batch = ExtendBatch::new(pool, &self.cu, slots, &init)?;
                        forward_extend(d, pool, layer, &batch, &w, &x, params, &mut self.ws, out)
                    }
                    LayerStep::Decode { .. } => {
                        let batch = DecodeBatch::new(pool, slots)?;
                        forward_decode(d, pool, layer, &batch, &w, &x, params, &mut self.ws, out)
                    }
                    LayerStep::Verify { draft, .. } => {
                        let batch = VerifyBatch::chain(pool, slots)?;
                        forward_verify(d, pool, layer, &batch, &w, &x, params, &mut self.ws, out)?;
                        commit(d, pool, layer, &commit_batch(pool, slots, draft)?)
                    }
                }
            }
            Part::Split => {
                let LayerStep::Mixed { prefill, chunk, .. } = self.step else {
                    return Err(Error::InvalidConfig("a split run needs a mixed step".into()));
                };
                let pt = prefill * chunk;
                let (o1, o2) = self.o.split_at_mut(pt * hv * vd);
                let batch = ExtendBatch::new(pool, &self.cu[..=prefill], &slots[..prefill], &init[..prefill])?;
                let out = TensorMut::from_slice(o1, &[pt, hv, vd])?;
                forward_extend(d, pool, layer, &batch, &w, &input(0, pt)?, params, &mut self.ws, out)?;
                let batch = DecodeBatch::new(pool, &slots[prefill..])?;
                let out = TensorMut::from_slice(o2, &[t - pt, hv, vd])?;
                forward_decode(d, pool, layer, &batch, &w, &input(pt, t)?, params, &mut self.ws, out)
            }
            Part::Conv => match self.step {
                LayerStep::Extend { .. } | LayerStep::Mixed { .. } => {
                    let batch = ExtendBatch::new(pool, &self.cu, slots, &init)?;
                    d.conv_extend(pool, layer, &batch, conv_io(&x, &w, &mut self.conv_out, t, cd)?)
                }
                LayerStep::Decode { .. } => {
                    d.conv_update(pool, layer, &DecodeBatch::new(pool, slots)?, conv_io(&x, &w, &mut self.conv_out, t, cd)?)
                }
                LayerStep::Verify { .. } => {
                    d.conv_verify(pool, layer, &VerifyBatch::chain(pool, slots)?, conv_io(&x, &w, &mut self.conv_out, t, cd)?)
                }
            },
            Part::Gate => d.gate(
                &dims,
                GateIo {
                    a: x.a,
                    b: x.b,
                    a_log: w.a_log,
                    dt_bias: w.dt_bias,
                    g: TensorMut::from_slice(&mut self.g, &[t, hv])?,
                    beta: TensorMut::from_slice(&mut self.beta, &[t, hv])?,
                },
            ),
            Part::Delta => {
                let (hk, kd) = (dims.num_k_heads, dims.head_k_dim);
                let view = |off: usize, shape: [usize; 3], strides: [usize; 3]| -> Result<TensorRef<'_>> {
                    TensorRef::strided(&self.conv_out, off, TensorMeta::strided(Device::Host, DType::F32, &shape, &strides)?)
                };
                let io = DeltaIo {
                    q: view(0, [t, hk, kd], [cd, kd, 1])?,
                    k: view(hk * kd, [t, hk, kd], [cd, kd, 1])?,
                    v: view(2 * hk * kd, [t, hv, vd], [cd, vd, 1])?,
                    g: TensorRef::from_slice(&self.g, &[t, hv])?,
                    beta: TensorRef::from_slice(&self.beta, &[t, hv])?,
                    o: TensorMut::from_slice(&mut self.o, &[t, hv, vd])?,
                    params,
                };
                match self.step {
                    LayerStep::Extend { .. } | LayerStep::Mixed { .. } => {
                        d.extend(pool, layer, &ExtendBatch::new(pool, &self.cu, slots, &init)?, io)
                    }
                    LayerStep::Decode { .. } => d.decode(pool, layer, &DecodeBatch::new(pool, slots)?, io),
                    LayerStep::Verify { .. } => d.verify(pool, layer, &VerifyBatch::chain(pool, slots)?, io),
                }
            }
        }
    }
}

/// Every request accepts about half its drafts.
fn commit_batch(pool: &PoolOf<CpuKMajor>, slots: &[Slot], draft: usize) -> Result<CommitBatch> {
    let accepted: Vec<Option<usize>> = (0..slots.len()).map(|i| Some((draft / 2 + i) % draft)).collect();
    CommitBatch::new(pool, slots, &accepted, &vec![None; slots.len()])
}

/// A whole-layer step and the share of its time in each kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerResult {
    /// The step.
    pub step: LayerStep,
    /// Threads.
    pub threads: usize,
    /// Layers cycled through.
    pub layers: usize,
    /// Best seconds of the whole layer step.
    pub secs: f64,
    /// Conv alone (same rounds).
    pub conv_secs: f64,
    /// Gate alone.
    pub gate_secs: f64,
    /// Delta rule alone (for a verify step: the verify; the commit is in the rest).
    pub delta_secs: f64,
}

impl LayerResult {
    /// Tokens per second of one layer.
    pub fn tokens_per_s(&self) -> f64 {
        self.step.tokens() as f64 / self.secs
    }

    /// `(conv + gate) / layer`.
    pub fn conv_gate_share(&self) -> f64 {
        (self.conv_secs + self.gate_secs) / self.secs
    }
}

/// Times the whole layer of `step` and its kernels alone, interleaved.
pub fn bench_layer(dims: ModelDims, step: LayerStep, threads: usize) -> Result<LayerResult> {
    let mut b = LayerBench::new(dims, step, threads, cycle_bytes())?;
    let parts = [Part::Layer, Part::Conv, Part::Gate, Part::Delta];
    let mut err = Ok(());
    let layers = b.layers();
    // one rep of a part is a pass over every layer (cold states, as in a model)
    let secs = interleaved(parts.len(), 3, Duration::from_millis(800), |i| {
        for _ in 0..layers {
            if let Err(e) = b.run(parts[i]) {
                err = Err(e);
            }
        }
    });
    err?;
    let per = |i: usize| secs[i] / layers as f64;
    Ok(LayerResult { step, threads, layers, secs: per(0), conv_secs: per(1), gate_secs: per(2), delta_secs: per(3) })
}

/// Two whole-layer steps timed in the same rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerPair {
    /// First step (and how it ran).
    pub a: (LayerStep, Part),
    /// Second step.
    pub b: (LayerStep, Part),
    /// Best seconds of `a`, per layer.
    pub a_secs: f64,
    /// Best seconds of `b`, per layer.
    pub b_secs: f64,
}

impl LayerPair {
    /// Tokens per second of `a` over those of `b`.
    pub fn rate_ratio(&self) -> f64 {
        (self.a.0.tokens() as f64 / self.a_secs) / (self.b.0.tokens() as f64 / self.b_secs)
    }

    /// Seconds of `a` over seconds of `b`.
    pub fn time_ratio(&self) -> f64 {
        self.a_secs / self.b_secs
    }
}

/// Times `a` and `b` (each a pass over its layers per rep), interleaved.
pub fn bench_layer_pair(dims: ModelDims, a: (LayerStep, Part), b: (LayerStep, Part), threads: usize) -> Result<LayerPair> {
    let mut ba = LayerBench::new(dims, a.0, threads, cycle_bytes())?;
    // the same step run two ways shares one bench (and its states)
    let mut bb = if b.0 == a.0 { None } else { Some(LayerBench::new(dims, b.0, threads, cycle_bytes())?) };
    let mut err = Ok(());
    let secs = interleaved(2, 3, Duration::from_millis(800), |i| {
        let (bench, part) = match (i, bb.as_mut()) {
            (0, _) => (&mut ba, a.1),
            (_, Some(x)) => (x, b.1),
            (_, None) => (&mut ba, b.1),
        };
        for _ in 0..bench.layers() {
            if let Err(e) = bench.run(part) {
                err = Err(e);
            }
        }
    });
    err?;
    let la = ba.layers() as f64;
    let lb = bb.as_ref().map_or(la, |x| x.layers() as f64);
    Ok(LayerPair { a, b, a_secs: secs[0] / la, b_secs: secs[1] / lb })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_and_part_runs() {
        let dims = ModelDims::new(2, 4, 32, 16, 4).unwrap();
        let steps = [
            LayerStep::Extend { seqs: 3, tokens: 70 },
            LayerStep::Decode { batch: 3 },
            LayerStep::Verify { batch: 2, draft: 3 },
            LayerStep::Mixed { prefill: 2, chunk: 9, decode: 3 },
        ];
        for step in steps {
            let mut b = LayerBench::new(dims, step, 1, 0).unwrap();
            assert_eq!(b.cu.last().copied(), Some(step.tokens()));
            for part in [Part::Layer, Part::Conv, Part::Gate, Part::Delta] {
                b.run(part).unwrap();
            }
            assert!(b.o.iter().all(|x| x.is_finite()) && b.o.iter().any(|&x| x != 0.0), "{step}");
            assert_eq!(b.run(Part::Split).is_ok(), matches!(step, LayerStep::Mixed { .. }), "{step}");
        }
    }
}
