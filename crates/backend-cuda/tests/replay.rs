//! Speculative mode replay on the CUDA kernels, in the CPU emulation: against
//! the scratch mode and against decoding the accepted tokens one by one
//! (bitwise: the replay kernel runs the decode's device functions, lane
//! layout and order, and rounds the state to its dtype after every step as a
//! decode's store and load do), and against the f64 oracle. Chains, trees
//! whose nodes are recomputed from the slot's state (a parent that is not
//! the previous step), a forest; a skipped request; a snapshot slot; f32 and
//! bf16 state; the vector and the per-warp lane layouts; two block sizes;
//! step plans (one upload per step, no host wait, a layer whose verify is
//! not the plan's refused). `cargo test -p deltanet-backend-cuda --features emulate --test replay`.
#![cfg(feature = "emulate")]

use deltanet_backend_cuda::{CudaDispatcher, EmuLauncher, StepPlan};
use deltanet_conformance::DeltaInputs;
use deltanet_core::oracle::error_ratio;
use deltanet_core::{
    tolerance, CommitBatch, ConvIo, DType, DecodeBatch, DeltaIo, DeltaParams, Device, DeviceMemory, DeviceTensor, Error, HeadMapping,
    HostState, KernelDispatcher, Kernels, MambaStatePool, ModelDims, PoolConfig, PoolOf, Slot, SpecMode, VerifyBatch,
};
use rand::{Rng, SeedableRng};

type Emu = CudaDispatcher<EmuLauncher>;

const LAYERS: usize = 2;
/// The layer every kernel runs on; layer 0 must never change.
const LAYER: usize = 1;
const REQUESTS: usize = 3;
const D: usize = 6;

/// Draft trees of the three requests (D steps each): a chain; a tree whose
/// steps 3 and 5 branch off earlier steps (recomputed from the slot's state
/// along their paths); a forest of two roots.
const TREES: [i64; REQUESTS * D] = [-1, 0, 1, 2, 3, 4, -1, 0, 1, 0, 3, 1, -1, -1, 1, 0, 2, 4];

/// Accepted steps: request 1 skipped, request 0 with a snapshot slot.
const ACCEPTED: [Option<usize>; REQUESTS] = [Some(4), None, Some(5)];

fn path(parents: &[i64], t: usize) -> Vec<usize> {
    deltanet_core::plan::path_to(parents, t)
}

fn emu(threads: u32) -> Emu {
    CudaDispatcher::with_launcher(EmuLauncher::with_block_threads(threads), Device::Host)
}

/// One case: shape, dtypes (recurrent state, conv state, inputs).
#[derive(Debug, Clone, Copy)]
struct Case {
    dims: ModelDims,
    state: DType,
    conv: DType,
    input: DType,
}

impl Case {
    fn config(&self, mode: SpecMode) -> PoolConfig {
        PoolConfig::new(LAYERS, 8, self.dims)
            .with_state_dtype(self.state)
            .with_conv_dtype(self.conv)
            .with_speculative(D)
            .with_spec_mode(mode)
    }
}

/// A step's inputs in host memory: the delta rule's, and the conv's `[T, conv_dim]` with its weights.
struct Inputs {
    delta: DeltaInputs,
    x: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Inputs {
    fn random(c: &Case, tokens: usize, seed: u64) -> Self {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let (cd, w) = (c.dims.conv_dim(), c.dims.conv_width);
        let mut rnd = |n: usize, dt: DType| (0..n).map(|_| dt.round(r.gen_range(-1.0f32..1.0))).collect::<Vec<_>>();
        let (x, weight, bias) = (rnd(tokens * cd, c.input), rnd(cd * w, DType::F32), rnd(cd, DType::F32));
        Inputs { delta: DeltaInputs::random(&c.dims, tokens, c.input, seed ^ 0x5eed), x, weight, bias }
    }

    /// Token `t` alone.
    fn token(&self, t: usize) -> Inputs {
        let cd = self.bias.len();
        Inputs {
            delta: self.delta.gather(&[t]),
            x: self.x[t * cd..(t + 1) * cd].to_vec(),
            weight: self.weight.clone(),
            bias: self.bias.clone(),
        }
    }
}

/// Which operation [`run`] runs.
enum Op<'a> {
    Verify(&'a VerifyBatch),
    Decode(&'a DecodeBatch),
}

/// One operation's input and output tensors in a dispatcher's memory (made
/// before a step, as an engine's are).
struct Staged<M: DeviceMemory> {
    /// x, weight, bias, out.
    conv: [DeviceTensor<M>; 4],
    /// q, k, v, g, beta, o.
    delta: [DeviceTensor<M>; 6],
    params: DeltaParams,
}

impl<M: DeviceMemory> Staged<M> {
    fn new(m: &M, c: &Case, x: &Inputs) -> Self {
        let (dims, t, dt) = (c.dims, x.delta.tokens, c.input);
        let (cd, w) = (dims.conv_dim(), dims.conv_width);
        let (hk, hv, kd, vd) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let f = |dt: DType, shape: &[usize], data: &[f32]| DeviceTensor::from_f32(m, dt, shape, data).unwrap();
        let i = &x.delta;
        Staged {
            conv: [
                f(dt, &[t, cd], &x.x),
                f(DType::F32, &[cd, w], &x.weight),
                f(DType::F32, &[cd], &x.bias),
                DeviceTensor::zeros(m, dt, &[t, cd]).unwrap(),
            ],
            delta: [
                f(dt, &[t, hk, kd], &i.q),
                f(dt, &[t, hk, kd], &i.k),
                f(dt, &[t, hv, vd], &i.v),
                f(DType::F32, &[t, hv], &i.g),
                f(DType::F32, &[t, hv], &i.beta),
                DeviceTensor::zeros(m, dt, &[t, hv, vd]).unwrap(),
            ],
            params: DeltaParams::new(&dims),
        }
    }

    /// Queues the conv then the delta rule of `op` on `layer`.
    fn launch<K: KernelDispatcher<Memory = M>>(&mut self, d: &K, pool: &mut PoolOf<K>, layer: usize, op: Op<'_>) {
        let [x, w, b, out] = &mut self.conv;
        let conv = ConvIo { x: x.view(), weight: w.view(), bias: Some(b.view()), out: out.view_mut() };
        let [q, k, v, g, beta, o] = &mut self.delta;
        let io = DeltaIo { q: q.view(), k: k.view(), v: v.view(), g: g.view(), beta: beta.view(), o: o.view_mut(), params: self.params };
        match op {
            Op::Verify(b) => {
                d.conv_verify(pool, layer, b, conv).unwrap();
                d.verify(pool, layer, b, io).unwrap();
            }
            Op::Decode(b) => {
                d.conv_update(pool, layer, b, conv).unwrap();
                d.decode(pool, layer, b, io).unwrap();
            }
        }
    }

    /// The (conv, delta) outputs as f32 (waits for the device).
    fn outputs(&self) -> (Vec<f32>, Vec<f32>) {
        (self.conv[3].to_f32().unwrap(), self.delta[5].to_f32().unwrap())
    }
}

/// Stages `x`, runs `op` on `layer` and reads the outputs.
fn run<K: KernelDispatcher>(d: &K, pool: &mut PoolOf<K>, layer: usize, op: Op<'_>, c: &Case, x: &Inputs) -> (Vec<f32>, Vec<f32>) {
    let mut s = Staged::new(d.memory(), c, x);
    s.launch(d, pool, layer, op);
    s.outputs()
}

/// Random state (every layer) of one slot.
fn random_state(c: &Case, seed: u64) -> HostState {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let t: Vec<f32> = (0..LAYERS * c.dims.state_elems()).map(|_| r.gen_range(-0.5f32..0.5)).collect();
    let cv: Vec<f32> = (0..LAYERS * c.dims.conv_elems()).map(|_| r.gen_range(-1.0f32..1.0)).collect();
    HostState::from_f32(LAYERS, c.dims, c.state, c.conv, &t, &cv).unwrap()
}

/// `LAYER`'s canonical (recurrent, conv) state of a slot, f32.
fn layer_state(pool: &impl MambaStatePool, dims: &ModelDims, s: Slot) -> (Vec<f32>, Vec<f32>) {
    let e = pool.export(s).unwrap();
    let (ps, pc) = (dims.state_elems(), dims.conv_elems());
    (e.temporal_f32()[LAYER * ps..(LAYER + 1) * ps].to_vec(), e.conv_f32()[LAYER * pc..(LAYER + 1) * pc].to_vec())
}

fn bits(a: &[f32]) -> Vec<u32> {
    a.iter().map(|x| x.to_bits()).collect()
}

/// Asserts `a` and `b` hold the same bits, naming the first element that differs.
#[track_caller]
fn assert_same<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("{what}: element {i} of {} differs: {:?} vs {:?}", a.len(), a[i], b[i]);
    }
}

/// Asserts two slots' exports are the same bytes.
#[track_caller]
fn assert_same_state(a: &HostState, b: &HostState, what: &str) {
    assert_same(&a.temporal, &b.temporal, &format!("{what} (recurrent state bytes)"));
    assert_same(&a.conv, &b.conv, &format!("{what} (conv state bytes)"));
}

/// What one replay run produced, for comparing block sizes.
struct Outcome {
    conv_out: Vec<u32>,
    delta_out: Vec<u32>,
    committed: Vec<HostState>,
}

/// Verify of [`TREES`] and commit of [`ACCEPTED`] on a replay pool and a
/// scratch pool holding the same states, and decoding each accepted path on
/// copies of the slots; every comparison asserted.
fn replay_case(d: &Emu, c: &Case, seed: u64) -> Outcome {
    let name = format!("{c:?}");
    let mut replay = d.new_pool(c.config(SpecMode::Replay)).unwrap();
    let mut scratch = d.new_pool(c.config(SpecMode::Scratch)).unwrap();
    let (slots, snap, copies) = (replay.alloc(REQUESTS).unwrap(), replay.alloc(1).unwrap()[0], replay.alloc(REQUESTS).unwrap());
    let sslots = scratch.alloc(REQUESTS).unwrap();
    let init: Vec<HostState> = (0..REQUESTS).map(|i| random_state(c, seed + i as u64)).collect();
    for i in 0..REQUESTS {
        replay.import(slots[i], &init[i]).unwrap();
        replay.import(copies[i], &init[i]).unwrap();
        scratch.import(sslots[i], &init[i]).unwrap();
    }
    let x = Inputs::random(c, REQUESTS * D, seed ^ 0xd1af7);

    // verify: outputs bitwise scratch verify's, and within tolerance of the oracle on each path
    let (rb, sb) = (VerifyBatch::tree(&replay, &slots, &TREES).unwrap(), VerifyBatch::tree(&scratch, &sslots, &TREES).unwrap());
    let (conv_r, delta_r) = run(d, &mut replay, LAYER, Op::Verify(&rb), c, &x);
    let (conv_s, delta_s) = run(d, &mut scratch, LAYER, Op::Verify(&sb), c, &x);
    assert_same(&bits(&conv_r), &bits(&conv_s), &format!("{name}: replay verify's conv outputs are scratch verify's"));
    assert_same(&bits(&delta_r), &bits(&delta_s), &format!("{name}: replay verify's outputs are scratch verify's"));
    for (i, init) in init.iter().enumerate() {
        assert_same_state(&replay.export(slots[i]).unwrap(), init, &format!("{name}: replay verify wrote request {i}'s slot"));
    }
    let per_o = c.dims.num_v_heads * c.dims.head_v_dim;
    let tol = if c.input == DType::F32 && c.state == DType::F32 { tolerance::F32 } else { tolerance::BF16 };
    for i in 0..REQUESTS {
        let s0 = layer_state(&replay, &c.dims, slots[i]).0;
        for t in 0..D {
            let p: Vec<usize> = path(&TREES[i * D..(i + 1) * D], t).iter().map(|&s| i * D + s).collect();
            let want = x.delta.gather(&p).oracle(&DeltaParams::new(&c.dims), &[0, p.len()], Some(&s0));
            let got = &delta_r[(i * D + t) * per_o..(i * D + t + 1) * per_o];
            let e = error_ratio(got, &want.o[(p.len() - 1) * per_o..]);
            assert!(e <= tol, "{name}: request {i} step {t}: verify output vs the oracle {e:e} > {tol:e}");
        }
    }

    // commit: the skipped request untouched, states and conv windows bitwise the scratch commit's
    let snaps = [Some(snap), None, None];
    let (rc, sc) =
        (CommitBatch::new(&replay, &slots, &ACCEPTED, &snaps).unwrap(), CommitBatch::new(&scratch, &sslots, &ACCEPTED, &[]).unwrap());
    d.commit(&mut replay, LAYER, &rc).unwrap();
    d.commit(&mut scratch, LAYER, &sc).unwrap();
    assert_same_state(&replay.export(slots[1]).unwrap(), &init[1], &format!("{name}: the skipped request's slot changed"));
    for i in [0, 2] {
        let (r, s) = (layer_state(&replay, &c.dims, slots[i]), layer_state(&scratch, &c.dims, sslots[i]));
        assert_same(&bits(&r.0), &bits(&s.0), &format!("{name}: request {i}: replay commit vs scratch commit (state)"));
        assert_same(&bits(&r.1), &bits(&s.1), &format!("{name}: request {i}: replay commit vs scratch commit (conv)"));
    }
    let snap_state = replay.export(snap).unwrap();
    let committed0 = replay.export(slots[0]).unwrap();
    let per = (replay.geometry().state_bytes(), replay.geometry().conv_bytes());
    let (t, cv) = (LAYER * per.0..(LAYER + 1) * per.0, LAYER * per.1..(LAYER + 1) * per.1);
    let what = format!("{name}: the snapshot slot holds the committed state");
    assert_same(&snap_state.temporal[t.clone()], &committed0.temporal[t], &what);
    assert_same(&snap_state.conv[cv.clone()], &committed0.conv[cv], &what);

    // decoding each accepted path's tokens one by one leaves the committed bits; layer 0 untouched
    for i in [0, 2] {
        let a = ACCEPTED[i].unwrap();
        let steps = path(&TREES[i * D..(i + 1) * D], a);
        let b = DecodeBatch::new(&replay, &copies[i..i + 1]).unwrap();
        for &s in &steps {
            run(d, &mut replay, LAYER, Op::Decode(&b), c, &x.token(i * D + s));
        }
        let (r, dec) = (replay.export(slots[i]).unwrap(), replay.export(copies[i]).unwrap());
        assert_same_state(&r, &dec, &format!("{name}: request {i}: replay commit of {steps:?} vs decoding those tokens"));
        assert_same(&r.temporal[..LAYER * per.0], &init[i].temporal[..LAYER * per.0], &format!("{name}: layer 0 changed"));
        // and the oracle on the path
        let ps = c.dims.state_elems();
        let s0: Vec<f32> = init[i].temporal_f32()[LAYER * ps..(LAYER + 1) * ps].to_vec();
        let p: Vec<usize> = steps.iter().map(|&s| i * D + s).collect();
        let want = x.delta.gather(&p).oracle(&DeltaParams::new(&c.dims), &[0, p.len()], Some(&s0));
        let e = error_ratio(&layer_state(&replay, &c.dims, slots[i]).0, &want.final_state);
        assert!(e <= tol, "{name}: request {i}: committed state vs the oracle {e:e} > {tol:e}");
    }
    Outcome { conv_out: bits(&conv_r), delta_out: bits(&delta_r), committed: slots.iter().map(|&s| replay.export(s).unwrap()).collect() }
}

fn cases() -> Vec<Case> {
    let dims = |hk, hv, k, v, w| ModelDims::new(hk, hv, k, v, w).unwrap();
    vec![
        // 16-byte lane groups: K = 128 f32 (one row per warp), two row blocks of V
        Case { dims: dims(1, 2, 128, 32, 4), state: DType::F32, conv: DType::F32, input: DType::F32 },
        // bf16 state in 16-byte groups (two rows per warp at K = 64), bf16 inputs and conv
        // state, tiled heads, a conv window of 2 (paths longer than it)
        Case {
            dims: dims(2, 4, 64, 24, 3).with_head_mapping(HeadMapping::Tiled),
            state: DType::BF16,
            conv: DType::BF16,
            input: DType::BF16,
        },
        // one warp per row: K not a multiple of the lane's entries (f32 state, f16 inputs
        // and conv state, a window of 7: longer than every path)
        Case { dims: dims(1, 2, 18, 40, 8), state: DType::F32, conv: DType::F16, input: DType::F16 },
        // ... and of bf16's eight
        Case { dims: dims(2, 2, 20, 16, 4), state: DType::BF16, conv: DType::F32, input: DType::F32 },
    ]
}

#[test]
fn replay_is_bitwise_scratch_and_decode_and_matches_the_oracle() {
    let d = emu(0);
    for (n, c) in cases().iter().enumerate() {
        replay_case(&d, c, 100 + n as u64);
    }
}

#[test]
fn replay_results_do_not_depend_on_the_block_size() {
    // one warp (four passes over a block's rows at K = 128) and four warps (one pass)
    let c = cases()[0];
    let (one, four) = (replay_case(&emu(32), &c, 7), replay_case(&emu(128), &c, 7));
    assert_same(&one.conv_out, &four.conv_out, "conv outputs");
    assert_same(&one.delta_out, &four.delta_out, "delta outputs");
    for (i, (a, b)) in one.committed.iter().zip(&four.committed).enumerate() {
        assert_same_state(a, b, &format!("request {i} committed"));
    }
}

#[test]
fn planned_replay_steps_upload_once_never_wait_and_match_the_batch_entry_points() {
    let c = Case { dims: ModelDims::new(1, 2, 32, 16, 4).unwrap(), state: DType::F32, conv: DType::F32, input: DType::F32 };
    let (d, counter) = CudaDispatcher::counting();
    let reference = emu(0);
    let mut pool = d.new_pool(c.config(SpecMode::Replay)).unwrap();
    let mut twin = reference.new_pool(c.config(SpecMode::Replay)).unwrap();
    let (slots, tslots) = (pool.alloc(REQUESTS).unwrap(), twin.alloc(REQUESTS).unwrap());
    for i in 0..REQUESTS {
        let st = random_state(&c, 40 + i as u64);
        pool.import(slots[i], &st).unwrap();
        twin.import(tslots[i], &st).unwrap();
    }
    let x = Inputs::random(&c, REQUESTS * D, 41);
    let (vb, tvb) = (VerifyBatch::tree(&pool, &slots, &TREES).unwrap(), VerifyBatch::tree(&twin, &tslots, &TREES).unwrap());
    let (cb, tcb) = (CommitBatch::new(&pool, &slots, &ACCEPTED, &[]).unwrap(), CommitBatch::new(&twin, &tslots, &ACCEPTED, &[]).unwrap());
    let mut plan = StepPlan::with_capacity(4);
    // a warm-up step sizes the plan; then each step: one upload, no allocation, no host wait
    for round in 0..2 {
        let mut staged: Vec<_> = (0..LAYERS).map(|_| Staged::new(d.memory(), &c, &x)).collect();
        counter.take();
        d.plan_verify(&mut plan, &pool, &vb).unwrap();
        for (layer, s) in staged.iter_mut().enumerate() {
            s.launch(&d.planned(&plan), &mut pool, layer, Op::Verify(&vb));
        }
        d.plan_commit(&mut plan, &pool, &cb).unwrap();
        for layer in 0..LAYERS {
            d.planned(&plan).commit(&mut pool, layer, &cb).unwrap();
        }
        let n = counter.take();
        let outs: Vec<_> = staged.iter().map(|s| s.outputs()).map(|(c, o)| (bits(&c), bits(&o))).collect();
        if round == 1 {
            assert_eq!((n.uploads, n.allocations, n.host_syncs), (2, 0, 0), "{n:?}");
            assert_eq!(n.launches.get("dnk_replay"), Some(&(2 * LAYERS as u64)), "{n:?}");
        }
        let mut touts = Vec::new();
        for layer in 0..LAYERS {
            let (conv, delta) = run(&reference, &mut twin, layer, Op::Verify(&tvb), &c, &x);
            touts.push((bits(&conv), bits(&delta)));
            reference.commit(&mut twin, layer, &tcb).unwrap();
        }
        for (layer, (o, t)) in outs.iter().zip(&touts).enumerate() {
            let what = format!("round {round} layer {layer}: planned verify outputs vs the batch entry points'");
            assert_same(&o.0, &t.0, &what);
            assert_same(&o.1, &t.1, &what);
        }
        for i in 0..REQUESTS {
            let what = format!("round {round}: request {i} committed");
            assert_same_state(&pool.export(slots[i]).unwrap(), &twin.export(tslots[i]).unwrap(), &what);
        }
    }

    // layer 1 verifies another tree than layer 0: a plan built for the step (layer 0's paths)
    // refuses layer 1's commit with a typed error and writes nothing
    let other = [-1i64, 0, 0, 2, 3, 4, -1, 0, 1, 2, 3, 4, -1, 0, 1, 2, 3, 4];
    let ob = VerifyBatch::tree(&pool, &slots, &other).unwrap();
    d.plan_verify(&mut plan, &pool, &vb).unwrap();
    run(&d.planned(&plan), &mut pool, 0, Op::Verify(&vb), &c, &x);
    d.plan_verify(&mut plan, &pool, &ob).unwrap();
    run(&d.planned(&plan), &mut pool, 1, Op::Verify(&ob), &c, &x);
    let accept_4 = [Some(4), Some(4), Some(4)];
    let cb = CommitBatch::new(&pool, &slots, &accept_4, &[]).unwrap();
    d.plan_commit(&mut plan, &pool, &cb).unwrap();
    let before = pool.digest().unwrap();
    let r = d.planned(&plan).commit(&mut pool, 1, &cb);
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "{r:?}");
    assert_eq!(pool.digest().unwrap(), before, "a refused commit wrote");
    // layer 0's commit is the plan's, and layer 1 commits through a one-use plan
    d.planned(&plan).commit(&mut pool, 0, &cb).unwrap();
    d.commit(&mut pool, 1, &cb).unwrap();
}

#[test]
fn the_backend_lists_both_speculative_modes() {
    let d = emu(0);
    assert_eq!(d.capabilities().spec_modes, SpecMode::ALL.to_vec());
}
