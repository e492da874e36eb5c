//! An engine loop over several layers: chunked prefill continuing states, decode, chain and
//! tree verify + commit, free and reuse, migration from a K-major pool to a V-major one. Each
//! layer step is checked against the f64 layer oracle. `cargo test` runs it (tests/examples.rs).
use deltanet::cpu::{CpuKMajor, CpuVMajor};
use deltanet::oracle::{self, LayerOracleOutput, SlotState};
use deltanet::*;

const LAYERS: usize = 3;
const DRAFT: usize = 3;
const TOL: f64 = 1e-5; // f32 kernels against the f64 oracle

/// Random weights per layer and random per-step inputs (xorshift: no dependency).
struct Model(ModelDims, Vec<[Vec<f32>; 4]>, u64);

impl Model {
    fn rand(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        let mut next = || (self.2 ^= self.2 << 13, self.2 ^= self.2 >> 7, self.2 ^= self.2 << 17, self.2 >> 40).3;
        (0..n).map(|_| lo + (hi - lo) * next() as f32 / (1 << 24) as f32).collect()
    }
}

enum Op<'a> {
    Extend(&'a ExtendBatch),
    Decode(&'a DecodeBatch),
    Verify(&'a VerifyBatch),
}

/// Asserts that `slot` holds `want` in `layer`.
fn check(pool: &dyn MambaStatePool, slot: Slot, layer: usize, want: &SlotState<f64>) -> Result<()> {
    let r = want.error_ratio(&SlotState::of(&pool.export(slot)?, layer));
    assert!(r < TOL, "layer {layer} slot {}: state error ratio {r:e}", slot.index());
    Ok(())
}

/// Runs `op` through every layer on fresh inputs of `t` tokens; checks outputs (and states,
/// but for verify: its states are checked after commit) and returns each layer's oracle.
fn step<D: KernelDispatcher>(cpu: &D, pool: &mut PoolOf<D>, m: &mut Model, op: Op<'_>, t: usize) -> Result<Vec<LayerOracleOutput>> {
    let (dims, mut wanted, mut ws) = (m.0, Vec::new(), LayerWorkspace::new(cpu.memory().clone()));
    let (hv, c) = (dims.num_v_heads, dims.conv_dim());
    for layer in 0..LAYERS {
        let (x, a, b) = (m.rand(t * c, -1.5, 1.5), m.rand(t * hv, -2.0, 2.0), m.rand(t * hv, -2.0, 2.0));
        let [a_log, dt_bias, conv_w, conv_b] = &m.1[layer];
        let w = LayerWeights {
            a_log: TensorRef::from_slice(a_log, &[hv])?,
            dt_bias: TensorRef::from_slice(dt_bias, &[hv])?,
            conv_weight: TensorRef::from_slice(conv_w, &[c, dims.conv_width])?,
            conv_bias: Some(TensorRef::from_slice(conv_b, &[c])?),
        };
        let input = LayerInput {
            mixed_qkv: TensorRef::from_slice(&x, &[t, c])?,
            a: TensorRef::from_slice(&a, &[t, hv])?,
            b: TensorRef::from_slice(&b, &[t, hv])?,
        };
        let (p, mut o) = (DeltaParams::new(&dims), vec![0f32; t * hv * dims.head_v_dim]);
        let out = TensorMut::from_slice(&mut o, &[t, hv, dims.head_v_dim])?;
        let (want, slots) = match op {
            Op::Extend(b) => (oracle::layer_extend(pool, layer, b, &w, &input, p)?, b.slots()),
            Op::Decode(b) => (oracle::layer_decode(pool, layer, b, &w, &input, p)?, b.slots()),
            Op::Verify(b) => (oracle::layer_verify(pool, layer, b, &w, &input, p)?, &[][..]),
        };
        match op {
            Op::Extend(b) => forward_extend(cpu, pool, layer, b, &w, &input, p, &mut ws, out)?,
            Op::Decode(b) => forward_decode(cpu, pool, layer, b, &w, &input, p, &mut ws, out)?,
            Op::Verify(b) => forward_verify(cpu, pool, layer, b, &w, &input, p, &mut ws, out)?,
        }
        assert!(oracle::error_ratio(&o, &want.o) < TOL, "layer {layer}: output");
        slots.iter().zip(&want.after).try_for_each(|(&s, want)| check(pool, s, layer, want))?;
        wanted.push(want);
    }
    Ok(wanted)
}

/// Commits accepted step `accepted[i]` of `slots[i]` in every layer; checks the slots.
fn accept<D: KernelDispatcher>(
    cpu: &D,
    pool: &mut PoolOf<D>,
    slots: &[Slot],
    accepted: &[usize],
    want: &[LayerOracleOutput],
) -> Result<()> {
    let batch = CommitBatch::new(pool, slots, accepted, &[])?;
    for (layer, want) in want.iter().enumerate() {
        commit(cpu, pool, layer, &batch)?;
        for (i, (&s, &a)) in slots.iter().zip(accepted).enumerate() {
            check(pool, s, layer, &want.after[i * DRAFT + a])?;
        }
    }
    Ok(())
}

pub fn main() -> Result<()> {
    let dims = ModelDims::builder().key_heads(2).value_heads(4).head_k_dim(16).head_v_dim(8).conv_width(4).build()?;
    let config = PoolConfig::builder(dims).layers(LAYERS).slots(4).speculative(DRAFT).build()?;
    let mut m = Model(dims, Vec::new(), 0x9e3779b97f4a7c15);
    for _ in 0..LAYERS {
        let (hv, c) = (dims.num_v_heads, dims.conv_dim());
        let w = [m.rand(hv, -3.0, 0.5), m.rand(hv, -1.0, 1.0), m.rand(c * dims.conv_width, -0.6, 0.6), m.rand(c, -0.2, 0.2)];
        m.1.push(w);
    }
    let (kcpu, vcpu) = (CpuKMajor::new(), CpuVMajor::new());
    let mut pool = kcpu.new_pool(config)?;
    let s = pool.alloc(2)?;
    // Chunked prefill of two prompts (24 + 16 and 32 + 14 tokens): the second chunk continues the state.
    let b = ExtendBatch::new(&pool, &[0, 24, 56], &s, &[false, false])?;
    step(&kcpu, &mut pool, &mut m, Op::Extend(&b), 56)?;
    let b = ExtendBatch::new(&pool, &[0, 16, 30], &s, &[true, true])?;
    step(&kcpu, &mut pool, &mut m, Op::Extend(&b), 30)?;
    let b = DecodeBatch::new(&pool, &s)?;
    step(&kcpu, &mut pool, &mut m, Op::Decode(&b), 2)?;
    let b = VerifyBatch::chain(&pool, &s, DRAFT)?;
    let want = step(&kcpu, &mut pool, &mut m, Op::Verify(&b), 2 * DRAFT)?;
    accept(&kcpu, &mut pool, &s, &[1, 2], &want)?;
    // A tree: request 0's steps 1 and 2 both follow step 0; request 1's step 2 follows step 1.
    let b = VerifyBatch::tree(&pool, &s, DRAFT, &[-1, 0, 0, -1, -1, 1])?;
    let want = step(&kcpu, &mut pool, &mut m, Op::Verify(&b), 2 * DRAFT)?;
    accept(&kcpu, &mut pool, &s, &[2, 2], &want)?;
    // Request 1 finishes; its slot goes to a new request prefilled beside request 0's next chunk.
    pool.free(&s[1..])?;
    let s = [s[0], pool.alloc(1)?[0]];
    let b = ExtendBatch::new(&pool, &[0, 5, 25], &s, &[true, false])?;
    step(&kcpu, &mut pool, &mut m, Op::Extend(&b), 25)?;
    // Migration: both requests move to a V-major pool (canonical export, exact) and continue there.
    let (mut vpool, mut v) = (vcpu.new_pool(config)?, Vec::new());
    for &from in &s {
        v.push(vpool.alloc(1)?[0]);
        vpool.import(v[v.len() - 1], &pool.export(from)?)?;
    }
    pool.free(&s)?;
    let b = DecodeBatch::new(&vpool, &v)?;
    step(&vcpu, &mut vpool, &mut m, Op::Decode(&b), 2)?;
    let b = VerifyBatch::chain(&vpool, &v, DRAFT)?;
    let want = step(&vcpu, &mut vpool, &mut m, Op::Verify(&b), 2 * DRAFT)?;
    accept(&vcpu, &mut vpool, &v, &[0, 2], &want)?;
    println!("every layer step of {} layers matches the f64 oracle", LAYERS);
    Ok(())
}
