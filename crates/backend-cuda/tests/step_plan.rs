//! Step plans on the counting emulation: a 30-layer extend step and a
//! 30-layer decode step through the layer forward, after one warm-up step
//! each, upload their tables exactly once, allocate nothing, never wait for
//! the device and launch the same kernels for every layer — and give,
//! bitwise, what the batch-only entry points (one-use plans) give.
#![cfg(feature = "emulate")]

use deltanet_backend_cuda::{CudaDispatcher, Launcher, StepPlan};
use deltanet_conformance::{LayerInputs, LayerParams};
use deltanet_core::{
    forward_decode, forward_extend, DType, DecodeBatch, DeltaParams, DeviceMemory, DeviceTensor, Error, ExtendBatch, HostState,
    KernelDispatcher, Kernels, LayerInput, LayerWeights, LayerWorkspace, MambaStatePool, ModelDims, PoolConfig, PoolOf, Slot,
};
use rand::{Rng, SeedableRng};

const LAYERS: usize = 30;
const REQUESTS: usize = 3;
/// Prefill lengths: one short sequence, one across a chunk boundary, one of one token.
const CU_SEQLENS: [usize; REQUESTS + 1] = [0, 5, 75, 76];

fn dims() -> ModelDims {
    ModelDims::new(2, 4, 16, 24, 4).unwrap()
}

/// One engine: a dispatcher, a 30-layer pool with random states, each layer's weights, a workspace and a plan.
struct Engine<L: Launcher> {
    d: CudaDispatcher<L>,
    pool: PoolOf<CudaDispatcher<L>>,
    slots: Vec<Slot>,
    weights: Vec<[DeviceTensor<L::Memory>; 4]>,
    ws: LayerWorkspace<L::Memory>,
    plan: StepPlan<L>,
}

/// One step's per-layer input and output tensors (the engine's, made before the step).
struct StepTensors<M: DeviceMemory> {
    layers: Vec<[DeviceTensor<M>; 4]>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Extend { continued: bool },
    Decode,
}

impl<L: Launcher> Engine<L> {
    fn new(d: CudaDispatcher<L>) -> Self {
        let dims = dims();
        let mut pool = d.new_pool(PoolConfig::new(LAYERS, REQUESTS + 1, dims)).unwrap();
        let slots = pool.alloc(REQUESTS).unwrap();
        let mut r = rand::rngs::StdRng::seed_from_u64(16);
        let cfg = pool.geometry().config;
        for &s in &slots {
            let t: Vec<f32> = (0..LAYERS * dims.state_elems()).map(|_| r.gen_range(-0.5..0.5)).collect();
            let c: Vec<f32> = (0..LAYERS * dims.conv_elems()).map(|_| r.gen_range(-1.0..1.0)).collect();
            pool.import(s, &HostState::from_f32(LAYERS, dims, cfg.state_dtype, cfg.conv_dtype, &t, &c).unwrap()).unwrap();
        }
        let m = d.memory().clone();
        let (hv, c, w) = (dims.num_v_heads, dims.conv_dim(), dims.conv_width);
        let weights = (0..LAYERS)
            .map(|l| {
                let p = LayerParams::random(&dims, 100 + l as u64);
                [
                    DeviceTensor::from_f32(&m, DType::F32, &[hv], &p.a_log).unwrap(),
                    DeviceTensor::from_f32(&m, DType::F32, &[hv], &p.dt_bias).unwrap(),
                    DeviceTensor::from_f32(&m, DType::F32, &[c, w], &p.conv_weight).unwrap(),
                    DeviceTensor::from_f32(&m, DType::F32, &[c], &p.conv_bias).unwrap(),
                ]
            })
            .collect();
        let ws = LayerWorkspace::new(m);
        Engine { d, pool, slots, weights, ws, plan: StepPlan::new() }
    }

    fn tensors(&self, kind: Kind, seed: u64) -> StepTensors<L::Memory> {
        let dims = dims();
        let t = if kind == Kind::Decode { REQUESTS } else { CU_SEQLENS[REQUESTS] };
        let m = self.d.memory();
        let (hv, c) = (dims.num_v_heads, dims.conv_dim());
        let layers = (0..LAYERS)
            .map(|l| {
                let x = LayerInputs::random(&dims, t, DType::F32, seed * 1000 + l as u64);
                [
                    DeviceTensor::from_f32(m, DType::F32, &[t, c], &x.mixed_qkv).unwrap(),
                    DeviceTensor::from_f32(m, DType::F32, &[t, hv], &x.a).unwrap(),
                    DeviceTensor::from_f32(m, DType::F32, &[t, hv], &x.b).unwrap(),
                    DeviceTensor::zeros(m, DType::F32, &[t, hv, dims.head_v_dim]).unwrap(),
                ]
            })
            .collect();
        StepTensors { layers }
    }

    /// Runs one step over every layer: through a plan built once, or through the batch-only entry points.
    fn step(&mut self, kind: Kind, x: &mut StepTensors<L::Memory>, planned: bool) {
        let params = DeltaParams::new(&dims());
        let Engine { d, pool, slots, weights, ws, plan } = self;
        let extend = match kind {
            Kind::Extend { continued } => Some(ExtendBatch::new(&*pool, &CU_SEQLENS, slots, &[continued; REQUESTS]).unwrap()),
            Kind::Decode => None,
        };
        let decode = DecodeBatch::new(&*pool, slots).unwrap();
        if planned {
            match &extend {
                Some(b) => d.plan_extend(plan, pool, b).unwrap(),
                None => d.plan_decode(plan, pool, &decode).unwrap(),
            }
        }
        for (l, (w, t)) in weights.iter().zip(x.layers.iter_mut()).enumerate() {
            let weights = LayerWeights { a_log: w[0].view(), dt_bias: w[1].view(), conv_weight: w[2].view(), conv_bias: Some(w[3].view()) };
            let [qkv, a, b, o] = t;
            let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
            let r = match (&extend, planned) {
                (Some(e), true) => forward_extend(&d.planned(plan), pool, l, e, &weights, &input, params, ws, o.view_mut()),
                (Some(e), false) => forward_extend(&*d, pool, l, e, &weights, &input, params, ws, o.view_mut()),
                (None, true) => forward_decode(&d.planned(plan), pool, l, &decode, &weights, &input, params, ws, o.view_mut()),
                (None, false) => forward_decode(&*d, pool, l, &decode, &weights, &input, params, ws, o.view_mut()),
            };
            r.unwrap();
        }
    }

    /// Every layer's output and every slot's state, as bytes.
    fn results(&self, x: &StepTensors<L::Memory>) -> (Vec<Vec<f32>>, Vec<HostState>) {
        let outs = x.layers.iter().map(|t| t[3].to_f32().unwrap()).collect();
        (outs, self.slots.iter().map(|&s| self.pool.export(s).unwrap()).collect())
    }
}

#[test]
fn a_planned_step_uploads_once_allocates_nothing_never_waits_and_matches_the_batch_path_bitwise() {
    let (counting, counter) = CudaDispatcher::counting();
    let mut planned = Engine::new(counting);
    let mut plain = Engine::new(CudaDispatcher::emulated());
    let steps = [
        (Kind::Extend { continued: true }, 1, "extend warm-up"),
        (Kind::Extend { continued: true }, 2, "extend"),
        (Kind::Decode, 3, "decode warm-up"),
        (Kind::Decode, 4, "decode"),
    ];
    for (kind, seed, name) in steps {
        let (mut a, mut b) = (planned.tensors(kind, seed), plain.tensors(kind, seed));
        counter.take();
        planned.step(kind, &mut a, true);
        let counts = counter.take();
        plain.step(kind, &mut b, false);
        let (pa, pb) = (planned.results(&a), plain.results(&b));
        assert!(pa.0 == pb.0, "{name}: outputs differ from the batch-only path");
        for (x, y) in pa.1.iter().zip(&pb.1) {
            assert!(x.temporal == y.temporal && x.conv == y.conv, "{name}: states differ from the batch-only path");
        }
        if !name.ends_with("warm-up") {
            let delta = if kind == Kind::Decode { "dnk_recurrent" } else { "dnk_extend" };
            assert_eq!(counts.uploads, 1, "{name}: {counts:?}");
            assert_eq!(counts.allocations, 0, "{name}: {counts:?}");
            assert_eq!(counts.host_syncs, 0, "{name}: {counts:?}");
            assert_eq!(counts.writes + counts.device_copies, 0, "{name}: {counts:?}");
            let want: std::collections::BTreeMap<_, _> =
                [("dnk_conv", LAYERS as u64), ("dnk_gate", LAYERS as u64), (delta, LAYERS as u64)].into();
            assert_eq!(counts.launches, want, "{name}: one conv, one gate and one delta-rule launch per layer");
        }
    }
}

#[test]
fn a_plan_refuses_another_batch_and_writes_nothing() {
    let (d, _counter) = CudaDispatcher::counting();
    let mut e = Engine::new(d);
    let mut x = e.tensors(Kind::Decode, 7);
    let mut plan = StepPlan::new();
    let first = DecodeBatch::new(&e.pool, &e.slots[..2]).unwrap();
    e.d.plan_decode(&mut plan, &e.pool, &first).unwrap();
    let before: Vec<HostState> = e.slots.iter().map(|&s| e.pool.export(s).unwrap()).collect();
    let other = DecodeBatch::new(&e.pool, &e.slots).unwrap();
    let w = &e.weights[0];
    let weights = LayerWeights { a_log: w[0].view(), dt_bias: w[1].view(), conv_weight: w[2].view(), conv_bias: Some(w[3].view()) };
    let [qkv, a, b, o] = &mut x.layers[0];
    let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
    let r =
        forward_decode(&e.d.planned(&plan), &mut e.pool, 0, &other, &weights, &input, DeltaParams::new(&dims()), &mut e.ws, o.view_mut());
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "{r:?}");
    let r = e.d.planned(&StepPlan::new()).decode(
        &mut e.pool,
        0,
        &other,
        deltanet_core::DeltaIo {
            q: qkv.view(),
            k: qkv.view(),
            v: qkv.view(),
            g: a.view(),
            beta: b.view(),
            o: o.view_mut(),
            params: DeltaParams::new(&dims()),
        },
    );
    assert!(r.is_err(), "an unbuilt plan runs nothing");
    let after: Vec<HostState> = e.slots.iter().map(|&s| e.pool.export(s).unwrap()).collect();
    assert!(before.iter().zip(&after).all(|(x, y)| x.temporal == y.temporal && x.conv == y.conv), "a refused call changed a state");
}

#[test]
fn a_fixed_capacity_plan_keeps_its_addresses_and_pads_onto_slot_zero() {
    let (d, counter) = CudaDispatcher::counting();
    let mut e = Engine::new(d);
    let mut reference = Engine::new(CudaDispatcher::emulated());
    let mut plan = StepPlan::with_capacity(8);
    let full = DecodeBatch::new(&e.pool, &e.slots).unwrap();
    e.d.plan_decode(&mut plan, &e.pool, &full).unwrap();
    let bytes = plan.device_bytes();
    counter.take();
    // a smaller batch in the same bucket: no allocation, the same buffer
    let part = DecodeBatch::new(&e.pool, &e.slots[1..]).unwrap();
    e.d.plan_decode(&mut plan, &e.pool, &part).unwrap();
    let c = counter.take();
    assert_eq!((c.allocations, c.uploads, plan.device_bytes()), (0, 1, bytes), "{c:?}");
    // and it computes what the batch-only path computes for that batch
    let m = e.d.memory().clone();
    let dims = dims();
    let x = LayerInputs::random(&dims, 2, DType::F32, 99);
    let w = LayerParams::random(&dims, 5);
    let mut outs = Vec::new();
    for engine_planned in [true, false] {
        let (hv, c) = (dims.num_v_heads, dims.conv_dim());
        let qkv = DeviceTensor::from_f32(&m, DType::F32, &[2, c], &x.mixed_qkv).unwrap();
        let a = DeviceTensor::from_f32(&m, DType::F32, &[2, hv], &x.a).unwrap();
        let b = DeviceTensor::from_f32(&m, DType::F32, &[2, hv], &x.b).unwrap();
        let mut o = DeviceTensor::zeros(&m, DType::F32, &[2, hv, dims.head_v_dim]).unwrap();
        let ws_w: Vec<DeviceTensor<_>> =
            [(&w.a_log, vec![hv]), (&w.dt_bias, vec![hv]), (&w.conv_weight, vec![c, dims.conv_width]), (&w.conv_bias, vec![c])]
                .iter()
                .map(|(v, s)| DeviceTensor::from_f32(&m, DType::F32, s, v).unwrap())
                .collect();
        let weights =
            LayerWeights { a_log: ws_w[0].view(), dt_bias: ws_w[1].view(), conv_weight: ws_w[2].view(), conv_bias: Some(ws_w[3].view()) };
        let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
        let params = DeltaParams::new(&dims);
        if engine_planned {
            forward_decode(&e.d.planned(&plan), &mut e.pool, 4, &part, &weights, &input, params, &mut e.ws, o.view_mut()).unwrap();
            outs.push((o.to_f32().unwrap(), e.slots.iter().map(|&s| e.pool.export(s).unwrap().temporal).collect::<Vec<_>>()));
        } else {
            let rm = *reference.d.memory();
            let t = |d: &DeviceTensor<_>| DeviceTensor::from_f32(&rm, DType::F32, d.meta().shape(), &d.to_f32().unwrap()).unwrap();
            let (qkv, a, b) = (t(&qkv), t(&a), t(&b));
            let mut o = DeviceTensor::zeros(&rm, DType::F32, &[2, hv, dims.head_v_dim]).unwrap();
            let rw: Vec<_> = ws_w.iter().map(t).collect();
            let weights =
                LayerWeights { a_log: rw[0].view(), dt_bias: rw[1].view(), conv_weight: rw[2].view(), conv_bias: Some(rw[3].view()) };
            let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
            let rpart = DecodeBatch::new(&reference.pool, &reference.slots[1..]).unwrap();
            forward_decode(&reference.d, &mut reference.pool, 4, &rpart, &weights, &input, params, &mut reference.ws, o.view_mut())
                .unwrap();
            outs.push((o.to_f32().unwrap(), reference.slots.iter().map(|&s| reference.pool.export(s).unwrap().temporal).collect()));
        }
    }
    assert!(outs[0] == outs[1], "a padded plan differs from the batch-only path");
}

/// The first `n` rows of a view.
fn first_rows(v: deltanet_core::TensorRef<'_>, n: usize) -> deltanet_core::TensorRef<'_> {
    let mut shape = v.meta().shape().to_vec();
    shape[0] = n;
    v.restride(0, &shape, v.meta().strides()).unwrap()
}

/// The first `n` rows of a mutable view.
fn first_rows_mut(v: deltanet_core::TensorMut<'_>, n: usize) -> deltanet_core::TensorMut<'_> {
    let mut shape = v.meta().shape().to_vec();
    assert!(n <= shape[0]);
    shape[0] = n;
    let meta = deltanet_core::TensorMeta::strided(v.meta().device(), v.meta().dtype(), &shape, v.meta().strides()).unwrap();
    // SAFETY: the first `n` rows lie inside `v`'s span (n <= its rows, same
    // strides), and `v`'s exclusive borrow moves into the new view.
    unsafe { deltanet_core::TensorMut::from_raw(v.addr(), meta) }
}

/// Runs a decode step over every layer on the first `n` slots, with the first
/// `n` rows of the step tensors: through `plan` when given, else through the
/// batch-only entry points.
fn decode_rows<L: Launcher>(e: &mut Engine<L>, n: usize, x: &mut StepTensors<L::Memory>, plan: Option<&StepPlan<L>>) {
    let params = DeltaParams::new(&dims());
    let batch = DecodeBatch::new(&e.pool, &e.slots[..n]).unwrap();
    for (l, (w, t)) in e.weights.iter().zip(x.layers.iter_mut()).enumerate() {
        let weights = LayerWeights { a_log: w[0].view(), dt_bias: w[1].view(), conv_weight: w[2].view(), conv_bias: Some(w[3].view()) };
        let [qkv, a, b, o] = t;
        let (qkv, a, b) = (first_rows(qkv.view(), n), first_rows(a.view(), n), first_rows(b.view(), n));
        let input = LayerInput { mixed_qkv: qkv, a, b };
        let out = first_rows_mut(o.view_mut(), n);
        match plan {
            Some(p) => forward_decode(&e.d.planned(p), &mut e.pool, l, &batch, &weights, &input, params, &mut e.ws, out),
            None => forward_decode(&e.d, &mut e.pool, l, &batch, &weights, &input, params, &mut e.ws, out),
        }
        .unwrap();
    }
}

/// The emulation's stand-in for a CUDA graph: a 30-layer decode step through
/// a fixed-capacity plan, captured, replays bitwise — and, with the plan
/// rebuilt for a smaller batch in the same bucket (padded onto slot 0) and
/// new inputs in the same buffers, the replay equals the eager step of that
/// batch, leaving the slot outside the batch untouched.
#[test]
fn a_captured_decode_step_replays_for_any_batch_of_its_bucket() {
    let (d, counter) = CudaDispatcher::counting();
    let mut e = Engine::new(d);
    let mut reference = Engine::new(CudaDispatcher::emulated());
    let mut x = e.tensors(Kind::Decode, 21);
    let mut plan = StepPlan::with_capacity(REQUESTS);
    let full = DecodeBatch::new(&e.pool, &e.slots).unwrap();
    // warm-up, then capture the same step
    e.d.plan_decode(&mut plan, &e.pool, &full).unwrap();
    decode_rows(&mut e, REQUESTS, &mut x, Some(&plan));
    let start: Vec<HostState> = e.slots.iter().map(|&s| e.pool.export(s).unwrap()).collect();
    e.d.plan_decode(&mut plan, &e.pool, &full).unwrap();
    let since = counter.get();
    counter.begin_capture();
    decode_rows(&mut e, REQUESTS, &mut x, Some(&plan));
    let graph = counter.end_capture(&since).expect("nothing but launches during the step");
    assert_eq!(graph.len(), 3 * LAYERS);
    let eager = e.results(&x);
    let restore = |e: &mut Engine<_>| {
        for (&s, st) in e.slots.clone().iter().zip(&start) {
            e.pool.import(s, st).unwrap();
        }
    };
    restore(&mut e);
    graph.launch().unwrap();
    let replayed = e.results(&x);
    assert!(eager.0 == replayed.0, "the replay's outputs differ");
    assert!(eager.1.iter().zip(&replayed.1).all(|(a, b)| a.temporal == b.temporal && a.conv == b.conv), "the replay's states differ");

    // a smaller batch of the bucket: new inputs in rows 0..2, the plan rebuilt, the graph replayed
    let n = REQUESTS - 1;
    restore(&mut e);
    let fresh = e.tensors(Kind::Decode, 22);
    for (t, f) in x.layers.iter_mut().zip(&fresh.layers) {
        for i in 0..3 {
            t[i].write_f32(&f[i].to_f32().unwrap()).unwrap();
        }
    }
    let part = DecodeBatch::new(&e.pool, &e.slots[..n]).unwrap();
    e.d.plan_decode(&mut plan, &e.pool, &part).unwrap();
    graph.launch().unwrap();
    let replayed = e.results(&x);
    // the same step, eagerly, on the reference engine from the same states
    for (&s, st) in reference.slots.clone().iter().zip(&start) {
        reference.pool.import(s, st).unwrap();
    }
    let mut y = reference.tensors(Kind::Decode, 22);
    decode_rows(&mut reference, n, &mut y, None);
    let want = reference.results(&y);
    let per_row = dims().num_v_heads * dims().head_v_dim;
    for (l, (got, want)) in replayed.0.iter().zip(&want.0).enumerate() {
        assert!(got[..n * per_row] == want[..n * per_row], "layer {l}: replayed outputs differ from the eager step");
    }
    for (i, (a, b)) in replayed.1.iter().zip(&want.1).enumerate() {
        assert!(a.temporal == b.temporal && a.conv == b.conv, "slot {i}: replayed state differs from the eager step");
    }
}

/// The tensor-core extend runs from the step plan too: its tables and
/// workspace are the plan's, so after a warm-up step a 30-layer extend step
/// uploads once, allocates nothing, never waits, launches both phases of
/// `dnk_extend_tc` per layer — and gives, bitwise, what the batch-only path
/// on the same kernel gives.
#[test]
fn a_planned_tensor_core_extend_step_allocates_nothing_after_warm_up_and_matches_the_batch_path_bitwise() {
    use deltanet_backend_cuda::ExtendPath;
    let (counting, counter) = CudaDispatcher::counting();
    let mut planned = Engine::new(counting.with_extend_path(ExtendPath::TensorCore));
    let mut plain = Engine::new(CudaDispatcher::emulated().with_extend_path(ExtendPath::TensorCore));
    for (seed, name) in [(1, "extend warm-up"), (2, "extend")] {
        let kind = Kind::Extend { continued: true };
        let (mut a, mut b) = (planned.tensors(kind, seed), plain.tensors(kind, seed));
        counter.take();
        planned.step(kind, &mut a, true);
        let counts = counter.take();
        plain.step(kind, &mut b, false);
        let (pa, pb) = (planned.results(&a), plain.results(&b));
        assert!(pa.0 == pb.0, "{name}: outputs differ from the batch-only path");
        for (x, y) in pa.1.iter().zip(&pb.1) {
            assert!(x.temporal == y.temporal && x.conv == y.conv, "{name}: states differ from the batch-only path");
        }
        if name == "extend" {
            assert_eq!(counts.uploads, 1, "{name}: {counts:?}");
            assert_eq!(counts.allocations, 0, "{name}: {counts:?}");
            assert_eq!(counts.host_syncs, 0, "{name}: {counts:?}");
            assert_eq!(counts.writes + counts.device_copies, 0, "{name}: {counts:?}");
            let want: std::collections::BTreeMap<_, _> =
                [("dnk_conv", LAYERS as u64), ("dnk_gate", LAYERS as u64), ("dnk_extend_tc", 2 * LAYERS as u64)].into();
            assert_eq!(counts.launches, want, "{name}: conv, gate and both tensor-core phases per layer");
        }
    }
}

/// A commit through a step plan copies only the committed requests (a
/// request accepted `None` is skipped), as the batch-only path does, and a
/// commit whose every request is skipped launches nothing and succeeds.
#[test]
fn a_planned_commit_skips_requests_accepted_none_and_an_all_skipped_one_launches_nothing() {
    use deltanet_core::{CommitBatch, DeltaIo, VerifyBatch};
    let dims = dims();
    let run = |accepted: &[Option<usize>], planned: bool| {
        let (d, counter) = CudaDispatcher::counting();
        let mut pool = d.new_pool(PoolConfig::new(1, 4, dims).with_speculative(3)).unwrap();
        let slots = pool.alloc(3).unwrap();
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        let cfg = pool.geometry().config;
        for &s in &slots {
            let t: Vec<f32> = (0..dims.state_elems()).map(|_| r.gen_range(-0.5..0.5)).collect();
            let c: Vec<f32> = (0..dims.conv_elems()).map(|_| r.gen_range(-1.0..1.0)).collect();
            pool.import(s, &HostState::from_f32(1, dims, cfg.state_dtype, cfg.conv_dtype, &t, &c).unwrap()).unwrap();
        }
        let m = d.memory().clone();
        let t = slots.len() * 3;
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let mut random = |shape: &[usize], lo: f32, hi: f32| {
            let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| r.gen_range(lo..hi)).collect();
            DeviceTensor::from_f32(&m, DType::F32, shape, &x).unwrap()
        };
        let (q, kk, vv) = (random(&[t, hk, k], -1.0, 1.0), random(&[t, hk, k], -1.0, 1.0), random(&[t, hv, v], -1.0, 1.0));
        let (g, beta) = (random(&[t, hv], -0.5, -0.01), random(&[t, hv], 0.1, 0.9));
        let mut o = DeviceTensor::zeros(&m, DType::F32, &[t, hv, v]).unwrap();
        let vb = VerifyBatch::chain(&pool, &slots).unwrap();
        let io = DeltaIo {
            q: q.view(),
            k: kk.view(),
            v: vv.view(),
            g: g.view(),
            beta: beta.view(),
            o: o.view_mut(),
            params: DeltaParams::new(&dims),
        };
        d.verify(&mut pool, 0, &vb, io).unwrap();
        let c = CommitBatch::new(&pool, &slots, accepted, &[]).unwrap();
        counter.take();
        if planned {
            let mut plan = StepPlan::new();
            d.plan_commit(&mut plan, &pool, &c).unwrap();
            d.planned(&plan).commit(&mut pool, 0, &c).unwrap();
        } else {
            d.commit(&mut pool, 0, &c).unwrap();
        }
        let counts = counter.take();
        (pool.digest().unwrap(), counts)
    };
    let (some, some_counts) = run(&[Some(1), None, Some(0)], true);
    assert_eq!(some, run(&[Some(1), None, Some(0)], false).0, "planned commit differs from the batch-only path");
    assert_eq!(some_counts.launches.get("dnk_commit"), Some(&1), "{some_counts:?}");
    let (none, none_counts) = run(&[None, None, None], true);
    assert!(none_counts.launches.is_empty(), "an all-skipped commit launched: {none_counts:?}");
    assert_eq!(none, run(&[None, None, None], false).0);
    assert_ne!(some, none, "the committed requests were not copied");
}
