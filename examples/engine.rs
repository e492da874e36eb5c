//! An engine loop over 3 layers: chunked prefill continuing states, decode, chain and tree verify + commit (a request
//! accepting nothing), free and reuse, migration K-major → V-major; pools held `&mut`, batches built inline. Every
//! layer step is checked against the f64 layer oracle; `cargo test` runs it (tests/examples.rs).
use deltanet::cpu::{CpuKMajor, CpuVMajor};
use deltanet::oracle::{self, LayerOracleOutput as Want, SlotState};
use deltanet::*;
use deltanet_conformance::{LayerInputs, LayerParams};

const TOL: f64 = 1e-5; // f32 kernels against the f64 oracle

/// A step's batch, so that one function runs (and checks) every kind of step.
enum Op<'a> {
    Extend(&'a ExtendBatch),
    Decode(&'a DecodeBatch),
    Verify(&'a VerifyBatch),
}

/// The model: random weights per layer, and the seed of the next step's random inputs.
struct Model(ModelDims, Vec<LayerParams>, u64);

impl Model {
    /// Runs `batch` through every layer on fresh inputs of `t` tokens; checks the outputs and the
    /// states left in extend and decode slots; returns each layer's oracle.
    fn step<D: KernelDispatcher>(&mut self, d: &D, pool: &mut PoolOf<D>, batch: Op, t: usize) -> Result<Vec<Want>> {
        let (dims, ws, mut wanted) = (self.0, &mut LayerWorkspace::new(d.memory().clone()), vec![]);
        let (p, mut o) = (DeltaParams::new(&dims), vec![0f32; t * dims.num_v_heads * dims.head_v_dim]);
        for (l, w) in self.1.iter().enumerate() {
            let (xs, w) = (LayerInputs::random(&dims, t, DType::F32, self.2 + l as u64), &w.weights(&dims)?);
            let (x, out) = (&xs.input()?, TensorMut::from_slice(&mut o, &[t, dims.num_v_heads, dims.head_v_dim])?);
            // The oracle reads the slots' states before the forward overwrites them.
            let (want, (), slots) = match batch {
                Op::Extend(b) => (oracle::layer_extend(pool, l, b, w, x, p)?, forward_extend(d, pool, l, b, w, x, p, ws, out)?, b.slots()),
                Op::Decode(b) => (oracle::layer_decode(pool, l, b, w, x, p)?, forward_decode(d, pool, l, b, w, x, p, ws, out)?, b.slots()),
                Op::Verify(b) => (oracle::layer_verify(pool, l, b, w, x, p)?, forward_verify(d, pool, l, b, w, x, p, ws, out)?, &[][..]),
            };
            assert!(oracle::error_ratio(&o, &want.o) < TOL, "layer {l}: output");
            for (&s, want) in slots.iter().zip(&want.after) {
                assert!(want.error_ratio(&SlotState::of(&pool.export(s)?, l)) < TOL, "layer {l} slot {s}: state");
            }
            wanted.push(want);
        }
        self.2 += 1000;
        Ok(wanted)
    }
}

/// Commits `accepted[i]` of `slots[i]` in every layer (`None`: nothing accepted, the slot keeps
/// its state); checks every slot against the verify's oracle `want`.
fn accept<D: KernelDispatcher>(d: &D, pool: &mut PoolOf<D>, slots: &[Slot], accepted: &[Option<usize>], want: &[Want]) -> Result<()> {
    let before: Vec<HostState> = slots.iter().map(|&s| pool.export(s)).collect::<Result<_>>()?;
    for (layer, want) in want.iter().enumerate() {
        d.commit(pool, layer, &CommitBatch::new(pool, slots, accepted, &[])?)?;
        for (i, (&s, a)) in slots.iter().zip(accepted).enumerate() {
            let (got, n) = (pool.export(s)?, pool.geometry().draft());
            assert!(a.map_or(got == before[i], |a| want.after[i * n + a].error_ratio(&SlotState::of(&got, layer)) < TOL), "slot {s}");
        }
    }
    Ok(())
}

pub fn main() -> Result<()> {
    let dims = ModelDims::builder().key_heads(2).value_heads(4).head_k_dim(16).head_v_dim(8).conv_width(4).build()?;
    let config = PoolConfig::builder(dims).layers(3).slots(4).speculative(3).build()?; // D = 3 drafts
    let (mut m, kcpu, vcpu) =
        (Model(dims, (0..3).map(|l| LayerParams::random(&dims, l)).collect(), 100), CpuKMajor::new(), CpuVMajor::new());
    let (pool, vpool) = (&mut kcpu.new_pool(config)?, &mut vcpu.new_pool(config)?);
    let s = pool.alloc(2)?;
    // Chunked prefill of two prompts (24 + 16 and 32 + 14 tokens): the second chunk continues the state.
    m.step(&kcpu, pool, Op::Extend(&ExtendBatch::new(pool, &[0, 24, 56], &s, &[false, false])?), 56)?;
    m.step(&kcpu, pool, Op::Extend(&ExtendBatch::new(pool, &[0, 16, 30], &s, &[true, true])?), 30)?;
    m.step(&kcpu, pool, Op::Decode(&DecodeBatch::new(pool, &s)?), 2)?;
    // A chain of the pool's D drafts: request 0 accepts two of them (step 1), request 1 none.
    let want = m.step(&kcpu, pool, Op::Verify(&VerifyBatch::chain(pool, &s)?), 6)?;
    accept(&kcpu, pool, &s, &[Some(1), None], &want)?;
    // A tree: request 0's steps 1 and 2 both follow step 0; request 1's step 2 follows step 1.
    let want = m.step(&kcpu, pool, Op::Verify(&VerifyBatch::tree(pool, &s, &[-1, 0, 0, -1, -1, 1])?), 6)?;
    accept(&kcpu, pool, &s, &[Some(2), Some(2)], &want)?;
    // Request 1 finishes; its slot goes to a new request prefilled beside request 0's next chunk.
    pool.free(&s[1..])?;
    let s = [s[0], pool.alloc(1)?[0]];
    m.step(&kcpu, pool, Op::Extend(&ExtendBatch::new(pool, &[0, 5, 25], &s, &[true, false])?), 25)?;
    // Migration: both requests move to the V-major pool (canonical export, exact) and continue there.
    let v = vpool.alloc(2)?;
    s.iter().zip(&v).try_for_each(|(&from, &to)| vpool.import(to, &pool.export(from)?))?;
    pool.free(&s)?;
    m.step(&vcpu, vpool, Op::Decode(&DecodeBatch::new(vpool, &v)?), 2)?;
    let want = m.step(&vcpu, vpool, Op::Verify(&VerifyBatch::chain(vpool, &v)?), 6)?;
    accept(&vcpu, vpool, &v, &[Some(0), Some(2)], &want)?;
    println!("every layer step of 3 layers matches the f64 layer oracle");
    Ok(())
}
