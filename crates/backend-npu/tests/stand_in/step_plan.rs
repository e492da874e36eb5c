//! Step plans on the evaluating stand-in: a 30-layer extend step and a
//! 30-layer decode step through the layer forward, after one warm-up step
//! each, upload their tables exactly once (asynchronously, from page-locked
//! memory), allocate nothing on the device or the host, never wait for the
//! device and issue the same operator calls for every layer — and give,
//! bitwise, what the batch-only entry points (one-use plans) give; planned
//! verify (chains and a tree) and commit steps likewise, a commit uploading
//! nothing; a plan refuses a call of another batch before queueing anything.

use crate::common::{dims, A950};
use deltanet_backend_npu::testing::{Counts, Event, Recorder};
use deltanet_backend_npu::{NpuDispatcher, NpuMemory, StepPlan};
use deltanet_conformance::{LayerInputs, LayerParams};
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const LAYERS: usize = 30;
const REQUESTS: usize = 3;
/// Prefill lengths: one short sequence, one across a chunk boundary, one of one token.
const CU_SEQLENS: [usize; REQUESTS + 1] = [0, 5, 75, 76];

/// One engine: a dispatcher on its own stand-in, a 30-layer pool with random states, weights, a workspace and a plan.
struct Engine {
    rec: Arc<Recorder>,
    d: NpuDispatcher,
    pool: PoolOf<NpuDispatcher>,
    slots: Vec<Slot>,
    weights: Vec<[DeviceTensor<NpuMemory>; 4]>,
    ws: LayerWorkspace<NpuMemory>,
    plan: StepPlan,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Extend,
    Decode,
}

/// One step's per-layer inputs and outputs (made before the step, as an engine's are).
type StepTensors = Vec<[DeviceTensor<NpuMemory>; 4]>;

impl Engine {
    fn new() -> Self {
        Self::with_draft(0)
    }

    /// With `draft` > 0, the pool keeps speculative scratch for that many draft tokens.
    fn with_draft(draft: usize) -> Self {
        let rec = Arc::new(Recorder::evaluating(A950));
        let d = NpuDispatcher::with_api(rec.clone(), 0).unwrap();
        let dims = dims();
        let mut cfg = PoolConfig::new(LAYERS, REQUESTS + 1, dims).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16);
        if draft > 0 {
            cfg = cfg.with_speculative(draft);
        }
        let mut pool = d.new_pool(cfg).unwrap();
        let slots = pool.alloc(REQUESTS).unwrap();
        let mut r = rand::rngs::StdRng::seed_from_u64(16);
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
        Engine { rec, d, pool, slots, weights, ws: LayerWorkspace::new(m), plan: StepPlan::new() }
    }

    /// Fresh random bf16 inputs (the NPU's input dtype) for every layer of a step.
    fn tensors(&self, kind: Kind, seed: u64) -> StepTensors {
        self.tensors_of(if kind == Kind::Decode { REQUESTS } else { CU_SEQLENS[REQUESTS] }, seed)
    }

    /// As [`tensors`](Self::tensors), for `t` tokens.
    fn tensors_of(&self, t: usize, seed: u64) -> StepTensors {
        let dims = dims();
        let m = self.d.memory();
        let (hv, c) = (dims.num_v_heads, dims.conv_dim());
        (0..LAYERS)
            .map(|l| {
                let x = LayerInputs::random(&dims, t, DType::BF16, seed * 1000 + l as u64);
                [
                    DeviceTensor::from_f32(m, DType::BF16, &[t, c], &x.mixed_qkv).unwrap(),
                    DeviceTensor::from_f32(m, DType::BF16, &[t, hv], &x.a).unwrap(),
                    DeviceTensor::from_f32(m, DType::BF16, &[t, hv], &x.b).unwrap(),
                    DeviceTensor::zeros(m, DType::BF16, &[t, hv, dims.head_v_dim]).unwrap(),
                ]
            })
            .collect()
    }

    /// Runs one step over every layer, through a plan built once or through
    /// the batch-only entry points; returns the operator names each layer issued.
    fn step(&mut self, kind: Kind, x: &mut StepTensors, planned: bool) -> Vec<Vec<&'static str>> {
        let params = DeltaParams::new(&dims());
        let Engine { rec, d, pool, slots, weights, ws, plan } = self;
        let extend = ExtendBatch::new(&*pool, &CU_SEQLENS, slots, &[true; REQUESTS]).unwrap();
        let decode = DecodeBatch::new(&*pool, slots).unwrap();
        if planned {
            match kind {
                Kind::Extend => d.plan_extend(plan, pool, &extend).unwrap(),
                Kind::Decode => d.plan_decode(plan, pool, &decode).unwrap(),
            }
        }
        let mut per_layer = Vec::new();
        for (l, (w, t)) in weights.iter().zip(x.iter_mut()).enumerate() {
            let before = rec.events().len();
            let weights = LayerWeights { a_log: w[0].view(), dt_bias: w[1].view(), conv_weight: w[2].view(), conv_bias: Some(w[3].view()) };
            let [qkv, a, b, o] = t;
            let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
            let r = match (kind, planned) {
                (Kind::Extend, true) => forward_extend(&d.planned(plan), pool, l, &extend, &weights, &input, params, ws, o.view_mut()),
                (Kind::Extend, false) => forward_extend(&*d, pool, l, &extend, &weights, &input, params, ws, o.view_mut()),
                (Kind::Decode, true) => forward_decode(&d.planned(plan), pool, l, &decode, &weights, &input, params, ws, o.view_mut()),
                (Kind::Decode, false) => forward_decode(&*d, pool, l, &decode, &weights, &input, params, ws, o.view_mut()),
            };
            r.unwrap();
            let ops = rec.events()[before..]
                .iter()
                .filter_map(|e| match e {
                    Event::Call(r) => Some(r.op),
                    _ => None,
                })
                .collect();
            per_layer.push(ops);
        }
        per_layer
    }

    /// Every layer's output and every slot's state.
    fn results(&self, x: &StepTensors) -> (Vec<Vec<f32>>, Vec<HostState>) {
        let outs = x.iter().map(|t| t[3].to_f32().unwrap()).collect();
        (outs, self.slots.iter().map(|&s| self.pool.export(s).unwrap()).collect())
    }
}

#[test]
fn a_planned_step_uploads_once_allocates_nothing_never_waits_and_matches_the_batch_path_bitwise() {
    let mut planned = Engine::new();
    let mut plain = Engine::new();
    let steps = [
        (Kind::Extend, 1, "extend warm-up"),
        (Kind::Extend, 2, "extend"),
        (Kind::Decode, 3, "decode warm-up"),
        (Kind::Decode, 4, "decode"),
    ];
    for (kind, seed, name) in steps {
        let (mut a, mut b) = (planned.tensors(kind, seed), plain.tensors(kind, seed));
        let before = planned.rec.counts();
        let per_layer = planned.step(kind, &mut a, true);
        let counts: Counts = planned.rec.counts() - before;
        plain.step(kind, &mut b, false);
        let (pa, pb) = (planned.results(&a), plain.results(&b));
        assert!(pa.0.iter().flatten().any(|&v| v != 0.0), "{name}: the outputs were never written");
        assert!(pa.0 == pb.0, "{name}: outputs differ from the batch-only path");
        for (x, y) in pa.1.iter().zip(&pb.1) {
            assert!(x.temporal == y.temporal && x.conv == y.conv, "{name}: states differ from the batch-only path");
        }
        if !name.ends_with("warm-up") {
            assert_eq!(counts.uploads, 1, "{name}: {counts:?}");
            assert_eq!(counts.device_allocs, 0, "{name}: {counts:?}");
            assert_eq!(counts.host_allocs, 0, "{name}: {counts:?}");
            assert_eq!(counts.host_syncs, 0, "{name}: {counts:?}");
            assert!(per_layer.iter().all(|l| *l == per_layer[0]), "{name}: layers issue different operator calls");
            assert_eq!(counts.operator_calls, LAYERS * per_layer[0].len(), "{name}: operator calls outside the layers");
            let delta = if kind == Kind::Decode { "aclnnRecurrentGatedDeltaRule" } else { "aclnnChunkGatedDeltaRule" };
            assert_eq!(per_layer[0].iter().filter(|&&op| op == delta).count(), 1, "{name}: {:?}", per_layer[0]);
        }
    }
}

#[test]
fn a_plan_refuses_another_batch_and_writes_nothing() {
    let mut e = Engine::new();
    let mut x = e.tensors(Kind::Decode, 7);
    let mut plan = StepPlan::new();
    let first = DecodeBatch::new(&e.pool, &e.slots[..2]).unwrap();
    e.d.plan_decode(&mut plan, &e.pool, &first).unwrap();
    let before: Vec<HostState> = e.slots.iter().map(|&s| e.pool.export(s).unwrap()).collect();
    e.rec.clear();
    let other = DecodeBatch::new(&e.pool, &e.slots).unwrap();
    let w = &e.weights[0];
    let weights = LayerWeights { a_log: w[0].view(), dt_bias: w[1].view(), conv_weight: w[2].view(), conv_bias: Some(w[3].view()) };
    let [qkv, a, b, o] = &mut x[0];
    let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
    let params = DeltaParams::new(&dims());
    let r = forward_decode(&e.d.planned(&plan), &mut e.pool, 0, &other, &weights, &input, params, &mut e.ws, o.view_mut());
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "{r:?}");
    let r = forward_decode(&e.d.planned(&StepPlan::new()), &mut e.pool, 0, &other, &weights, &input, params, &mut e.ws, o.view_mut());
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "an unbuilt plan runs nothing: {r:?}");
    // Refused before the layer's first operator (the conv) was queued: only the
    // layer workspace's first allocation (zero-filled) happened.
    let queued = e.rec.events().into_iter().filter(|e| !matches!(e, Event::Zero { .. })).collect::<Vec<_>>();
    assert!(queued.is_empty(), "a refused call queued work: {queued:?}");
    let after: Vec<HostState> = e.slots.iter().map(|&s| e.pool.export(s).unwrap()).collect();
    assert!(before.iter().zip(&after).all(|(x, y)| x.temporal == y.temporal && x.conv == y.conv), "a refused call changed a state");
}

/// Verify of a draft tree, then commit of one accepted step per request, over
/// every layer: through one plan per step, or the batch-only entry points.
fn verify_and_commit(e: &mut Engine, parents: &[i64], accepted: &[Option<usize>], planned: bool) -> (Vec<Vec<f32>>, Vec<HostState>) {
    let dims = dims();
    let t = parents.len();
    let x = e.tensors_of(t, 9);
    let batch = VerifyBatch::tree(&e.pool, &e.slots, parents).unwrap();
    let commit_batch = CommitBatch::new(&e.pool, &e.slots, accepted, &[]).unwrap();
    let params = DeltaParams::new(&dims);
    if planned {
        e.d.plan_verify(&mut e.plan, &e.pool, &batch).unwrap();
    }
    let mut outs = Vec::new();
    for (l, (w, mut t)) in e.weights.iter().zip(x).enumerate() {
        let weights = LayerWeights { a_log: w[0].view(), dt_bias: w[1].view(), conv_weight: w[2].view(), conv_bias: Some(w[3].view()) };
        let [qkv, a, b, o] = &mut t;
        let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
        if planned {
            forward_verify(&e.d.planned(&e.plan), &mut e.pool, l, &batch, &weights, &input, params, &mut e.ws, o.view_mut()).unwrap();
        } else {
            forward_verify(&e.d, &mut e.pool, l, &batch, &weights, &input, params, &mut e.ws, o.view_mut()).unwrap();
        }
        outs.push(o.to_f32().unwrap());
    }
    if planned {
        let before = e.rec.counts();
        e.d.plan_commit(&mut e.plan, &e.pool, &commit_batch).unwrap();
        for l in 0..LAYERS {
            commit(&e.d.planned(&e.plan), &mut e.pool, l, &commit_batch).unwrap();
        }
        let c = e.rec.counts() - before;
        assert_eq!((c.uploads, c.host_syncs, c.device_allocs, c.operator_calls), (0, 0, 0, 0), "a commit is device copies only: {c:?}");
    } else {
        for l in 0..LAYERS {
            commit(&e.d, &mut e.pool, l, &commit_batch).unwrap();
        }
    }
    (outs, e.slots.iter().map(|&s| e.pool.export(s).unwrap()).collect())
}

#[test]
fn planned_verify_and_commit_steps_match_the_batch_path_bitwise() {
    const DRAFT: usize = 3;
    // Request 0 drafts a chain, request 1 a tree (two children of the root), request 2 a chain.
    let parents = [-1, 0, 1, -1, -1, 0, -1, 0, 1];
    let accepted = [Some(2), Some(1), None];
    let (mut planned, mut plain) = (Engine::with_draft(DRAFT), Engine::with_draft(DRAFT));
    let (pa, pb) = (verify_and_commit(&mut planned, &parents, &accepted, true), verify_and_commit(&mut plain, &parents, &accepted, false));
    assert!(pa.0.iter().flatten().any(|&v| v != 0.0), "the verify outputs were never written");
    assert!(pa.0 == pb.0, "planned verify outputs differ from the batch-only path");
    for (x, y) in pa.1.iter().zip(&pb.1) {
        assert!(x.temporal == y.temporal && x.conv == y.conv, "planned commit states differ from the batch-only path");
    }
}

#[test]
fn a_rebuild_never_rewrites_staging_under_a_queued_upload_and_waits_only_past_four_in_flight() {
    let e = Engine::new();
    let batch = DecodeBatch::new(&e.pool, &e.slots).unwrap();
    let mut plan = StepPlan::new();
    e.d.plan_decode(&mut plan, &e.pool, &batch).unwrap(); // warm-up: its upload has run
    e.rec.hold_queue(true); // from now on the device is behind: every upload stays queued
    let mut sources = Vec::new();
    let mut per_build = Vec::new();
    for _ in 0..5 {
        e.rec.clear();
        let before = e.rec.counts();
        e.d.plan_decode(&mut plan, &e.pool, &batch).unwrap();
        per_build.push(e.rec.counts() - before);
        sources.extend(e.rec.events().into_iter().filter_map(|ev| match ev {
            Event::Upload { src, .. } => Some(src),
            _ => None,
        }));
    }
    // The warm-up's staging first (its upload ran), then a new one per build while
    // its predecessors' uploads are queued, up to four in flight.
    let distinct: std::collections::HashSet<_> = sources[..4].iter().collect();
    assert_eq!(distinct.len(), 4, "a queued upload's staging was rewritten: {sources:?}");
    let allocs: Vec<usize> = per_build.iter().map(|c| c.host_allocs).collect();
    let syncs: Vec<usize> = per_build.iter().map(|c| c.host_syncs).collect();
    assert_eq!(allocs, [0, 1, 1, 1, 0], "{per_build:?}");
    // The fifth build finds four uploads queued: it waits for the oldest and reuses its staging.
    assert_eq!(syncs, [0, 0, 0, 0, 1], "{per_build:?}");
    assert_eq!(sources[4], sources[0]);
    assert!(per_build.iter().all(|c| c.uploads == 1 && c.device_allocs == 0), "{per_build:?}");
    // Once the device catches up, a rebuild reuses a staging buffer without waiting.
    e.rec.hold_queue(false);
    let before = e.rec.counts();
    e.d.plan_decode(&mut plan, &e.pool, &batch).unwrap();
    let c = e.rec.counts() - before;
    assert_eq!((c.host_allocs, c.host_syncs, c.uploads), (0, 0, 1), "{c:?}");
}
