//! The layer forward (`deltanet_core::forward_*`: conv → gate → delta rule)
//! on the NPU, end to end on an evaluating stand-in, against the f64 oracle
//! started from what the pool holds: extend (fresh, continuing, with a
//! snapshot), decode, chain and tree verify, and commit of the accepted step.
//! The NPU takes bf16 inputs only, so this is also the test that the layer
//! forward's workspace is in a dtype the backend accepts.

use crate::common::{dims, A950};
use deltanet_backend_npu::testing::Recorder;
use deltanet_backend_npu::{NpuDispatcher, NpuMemory};
use deltanet_core::oracle::{causal_conv1d, error_ratio, gate, gated_delta_rule};
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// bf16 inputs, conv output, q/k/beta and state, against f64 (the on-device tests' bound).
const TOL: f64 = 3e-2;
const LAYERS: usize = 2;
const LAYER: usize = 1;
const DRAFT: usize = 3;

fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(0.05f32..1.0) * scale * if rng.gen() { 1.0 } else { -1.0 }).collect()
}

/// Host values (rounded to the device dtype) and their device copy.
struct Both {
    host: Vec<f32>,
    dev: DeviceTensor<NpuMemory>,
}

fn both(d: &NpuDispatcher, dtype: DType, shape: &[usize], values: Vec<f32>) -> Both {
    let host: Vec<f32> = values.iter().map(|&x| dtype.round(x)).collect();
    Both { dev: DeviceTensor::from_f32(d.memory(), dtype, shape, &host).unwrap(), host }
}

struct Weights {
    a_log: Both,
    dt_bias: Both,
    conv: Both,
    bias: Both,
}

impl Weights {
    fn new(d: &NpuDispatcher, rng: &mut ChaCha8Rng) -> Self {
        let m = dims();
        let (hv, c, w) = (m.num_v_heads, m.conv_dim(), m.conv_width);
        Weights {
            a_log: both(d, DType::F32, &[hv], random(rng, hv, 1.0)),
            dt_bias: both(d, DType::F32, &[hv], random(rng, hv, 1.0)),
            conv: both(d, DType::F32, &[c, w], random(rng, c * w, 0.5)),
            bias: both(d, DType::F32, &[c], random(rng, c, 0.2)),
        }
    }
    fn layer(&self) -> LayerWeights<'_> {
        LayerWeights {
            a_log: self.a_log.dev.view(),
            dt_bias: self.dt_bias.dev.view(),
            conv_weight: self.conv.dev.view(),
            conv_bias: Some(self.bias.dev.view()),
        }
    }
}

/// One batch's per-token layer inputs, bf16 (the only input dtype the NPU takes).
struct Input {
    x: Both,
    a: Both,
    b: Both,
}

impl Input {
    fn new(d: &NpuDispatcher, rng: &mut ChaCha8Rng, t: usize) -> Self {
        let m = dims();
        let (hv, c) = (m.num_v_heads, m.conv_dim());
        Input {
            x: both(d, DType::BF16, &[t, c], random(rng, t * c, 1.0)),
            a: both(d, DType::BF16, &[t, hv], random(rng, t * hv, 1.0)),
            b: both(d, DType::BF16, &[t, hv], random(rng, t * hv, 2.0)),
        }
    }
    fn layer(&self) -> LayerInput<'_> {
        LayerInput { mixed_qkv: self.x.dev.view(), a: self.a.dev.view(), b: self.b.dev.view() }
    }
}

/// One slot's layer-`LAYER` state, canonical (K-major recurrent, channels-first conv), as f32.
#[derive(Debug, Clone, PartialEq)]
struct SlotState {
    temporal: Vec<f32>,
    conv: Vec<f32>,
}

fn state_of(pool: &PoolOf<NpuDispatcher>, slot: Slot) -> SlotState {
    let m = dims();
    let h = pool.export(slot).unwrap();
    let (per, cper) = (m.state_elems(), m.conv_elems());
    SlotState {
        temporal: h.temporal_f32()[LAYER * per..(LAYER + 1) * per].to_vec(),
        conv: h.conv_f32()[LAYER * cper..(LAYER + 1) * cper].to_vec(),
    }
}

/// The oracle over `rows` of `input` (in order) from `from` (`None`: zeros):
/// each row's output `[HV*V]` and the state after the last row. The conv
/// output and beta are rounded to bf16 where the NPU rounds them.
fn oracle(w: &Weights, input: &Input, rows: &[usize], from: Option<&SlotState>) -> (Vec<Vec<f64>>, SlotState) {
    let m = dims();
    let (hk, hv, k, v, c, cw) = (m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim, m.conv_dim(), m.conv_width);
    let n = rows.len();
    let pick = |x: &[f32], width: usize| rows.iter().flat_map(|&r| x[r * width..(r + 1) * width].to_vec()).collect::<Vec<f32>>();
    let (x, a, b) = (pick(&input.x.host, c), pick(&input.a.host, hv), pick(&input.b.host, hv));
    let conv = causal_conv1d(&x, &w.conv.host, Some(&w.bias.host), c, cw, &[0, n], from.map(|s| s.conv.as_slice()));
    let y: Vec<f32> = conv.out.iter().map(|&v| DType::BF16.round(v as f32)).collect();
    let split = |lo: usize, width: usize| (0..n).flat_map(|t| y[t * c + lo..t * c + lo + width].to_vec()).collect::<Vec<f32>>();
    let (q, kk, vv) = (split(0, hk * k), split(hk * k, hk * k), split(2 * hk * k, hv * v));
    let (g, beta) = gate(&a, &b, &w.a_log.host, &w.dt_bias.host);
    let g: Vec<f32> = g.iter().map(|&x| x as f32).collect();
    let beta: Vec<f32> = beta.iter().map(|&x| DType::BF16.round(x as f32)).collect();
    let out = gated_delta_rule(&m, &DeltaParams::new(&m), &q, &kk, &vv, &g, &beta, &[0, n], from.map(|s| s.temporal.as_slice()));
    let per_row = out.o.chunks_exact(hv * v).map(<[f64]>::to_vec).collect();
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect();
    (per_row, SlotState { temporal: f32s(&out.final_state), conv: f32s(&conv.conv_state) })
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    let e = error_ratio(got, want);
    assert!(e <= TOL, "{what}: error ratio {e:.3e} > {TOL:e}");
}

/// The recurrent state within `TOL`; the conv state (raw bf16 inputs, copied) exactly.
fn assert_state(what: &str, got: &SlotState, want: &SlotState) {
    let want_t: Vec<f64> = want.temporal.iter().map(|&x| DType::BF16.round(x) as f64).collect();
    assert_close(&format!("{what} recurrent state"), &got.temporal, &want_t);
    assert_eq!(got.conv, want.conv, "{what} conv state");
}

struct Fixture {
    d: NpuDispatcher,
    pool: PoolOf<NpuDispatcher>,
    ws: LayerWorkspace<NpuMemory>,
    w: Weights,
    rng: ChaCha8Rng,
}

impl Fixture {
    fn new(seed: u64) -> Self {
        let d = NpuDispatcher::with_api(Arc::new(Recorder::evaluating(A950)), 0).unwrap();
        let cfg = PoolConfig::new(LAYERS, 6, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16).with_speculative(DRAFT);
        let pool = d.new_pool(cfg).unwrap();
        let ws = LayerWorkspace::new(d.memory().clone());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w = Weights::new(&d, &mut rng);
        Fixture { d, pool, ws, w, rng }
    }
    fn input(&mut self, t: usize) -> Input {
        Input::new(&self.d, &mut self.rng, t)
    }
    fn out(&self, t: usize) -> DeviceTensor<NpuMemory> {
        let m = dims();
        DeviceTensor::zeros(self.d.memory(), DType::BF16, &[t, m.num_v_heads, m.head_v_dim]).unwrap()
    }
    /// Row `r` of an output `[T, HV, V]`.
    fn row(out: &DeviceTensor<NpuMemory>, r: usize) -> Vec<f32> {
        let m = dims();
        let n = m.num_v_heads * m.head_v_dim;
        out.to_f32().unwrap()[r * n..(r + 1) * n].to_vec()
    }
    fn extend(&mut self, batch: &ExtendBatch, input: &Input, out: &mut DeviceTensor<NpuMemory>) {
        let params = DeltaParams::new(&dims());
        let w = self.w.layer();
        forward_extend(&self.d, &mut self.pool, LAYER, batch, &w, &input.layer(), params, &mut self.ws, out.view_mut()).unwrap();
    }
}

#[test]
fn forward_extend_on_the_npu_matches_the_oracle_fresh_continuing_and_at_a_snapshot() {
    let mut f = Fixture::new(21);
    let s = f.pool.alloc(4).unwrap();
    // Seq 0 fresh (5 tokens), seq 1 fresh (9 tokens) with a snapshot after 4 into s[3].
    let input = f.input(14);
    let batch = ExtendBatch::new(&f.pool, &[0, 5, 14], &s[..2], &[false, false])
        .unwrap()
        .with_snapshots(&f.pool, &[Snapshot { seq: 1, position: 4, slot: s[3] }])
        .unwrap();
    let mut out = f.out(14);
    f.extend(&batch, &input, &mut out);
    let (o0, st0) = oracle(&f.w, &input, &(0..5).collect::<Vec<_>>(), None);
    let (o1, st1) = oracle(&f.w, &input, &(5..14).collect::<Vec<_>>(), None);
    let (_, snap) = oracle(&f.w, &input, &(5..9).collect::<Vec<_>>(), None);
    assert_close("extend out", &out.to_f32().unwrap(), &[o0, o1].concat().concat());
    assert_state("seq 0", &state_of(&f.pool, s[0]), &st0);
    assert_state("seq 1", &state_of(&f.pool, s[1]), &st1);
    assert_state("snapshot after 4", &state_of(&f.pool, s[3]), &snap);

    // Continue seq 0 (3 more tokens) next to a fresh seq in s[2] (4 tokens).
    let before = state_of(&f.pool, s[0]);
    let input = f.input(7);
    let batch = ExtendBatch::new(&f.pool, &[0, 3, 7], &[s[0], s[2]], &[true, false]).unwrap();
    let mut out = f.out(7);
    f.extend(&batch, &input, &mut out);
    let (o0, st0) = oracle(&f.w, &input, &[0, 1, 2], Some(&before));
    let (o2, st2) = oracle(&f.w, &input, &[3, 4, 5, 6], None);
    assert_close("continued extend out", &out.to_f32().unwrap(), &[o0, o2].concat().concat());
    assert_state("continued seq 0", &state_of(&f.pool, s[0]), &st0);
    assert_state("fresh seq 2", &state_of(&f.pool, s[2]), &st2);
}

#[test]
fn forward_decode_on_the_npu_matches_the_oracle() {
    let mut f = Fixture::new(22);
    let s = f.pool.alloc(3).unwrap();
    let prefill = f.input(12);
    let batch = ExtendBatch::new(&f.pool, &[0, 4, 9, 12], &s, &[false; 3]).unwrap();
    let mut out = f.out(12);
    f.extend(&batch, &prefill, &mut out);
    for step in 0..2 {
        let order = [s[2], s[0], s[1]];
        let before: Vec<SlotState> = order.iter().map(|&sl| state_of(&f.pool, sl)).collect();
        let input = f.input(3);
        let batch = DecodeBatch::new(&f.pool, &order).unwrap();
        let mut out = f.out(3);
        let w = f.w.layer();
        forward_decode(&f.d, &mut f.pool, LAYER, &batch, &w, &input.layer(), DeltaParams::new(&dims()), &mut f.ws, out.view_mut()).unwrap();
        for (i, &sl) in order.iter().enumerate() {
            let (o, st) = oracle(&f.w, &input, &[i], Some(&before[i]));
            assert_close(&format!("decode step {step} request {i} out"), &Fixture::row(&out, i), &o[0]);
            assert_state(&format!("decode step {step} request {i}"), &state_of(&f.pool, sl), &st);
        }
    }
}

/// Steps from the root to `t` (inclusive), root first.
fn path(parents: &[i64], t: usize) -> Vec<usize> {
    let mut p = vec![t];
    while parents[*p.last().unwrap()] >= 0 {
        p.push(parents[*p.last().unwrap()] as usize);
    }
    p.reverse();
    p
}

/// Verify (chain or tree, by `parents` per request) then commit `accepted`:
/// every step's output is the oracle's over its path; verify leaves the pool
/// unchanged; commit makes each slot's state the oracle's after its accepted path.
fn verify_then_commit(seed: u64, parents: &[i64], accepted: &[usize]) {
    let mut f = Fixture::new(seed);
    let n = accepted.len();
    let s = f.pool.alloc(n).unwrap();
    let mut cu = vec![0];
    cu.extend((1..=n).map(|i| 3 * i + 1));
    let prefill = f.input(cu[n]);
    let batch = ExtendBatch::new(&f.pool, &cu, &s, &vec![false; n]).unwrap();
    let mut out = f.out(cu[n]);
    f.extend(&batch, &prefill, &mut out);

    let before: Vec<SlotState> = s.iter().map(|&sl| state_of(&f.pool, sl)).collect();
    let input = f.input(n * DRAFT);
    let batch = if parents.iter().enumerate().all(|(t, &p)| p == (t % DRAFT) as i64 - 1) {
        VerifyBatch::chain(&f.pool, &s).unwrap()
    } else {
        VerifyBatch::tree(&f.pool, &s, parents).unwrap()
    };
    let mut out = f.out(n * DRAFT);
    let w = f.w.layer();
    forward_verify(&f.d, &mut f.pool, LAYER, &batch, &w, &input.layer(), DeltaParams::new(&dims()), &mut f.ws, out.view_mut()).unwrap();
    for (i, &sl) in s.iter().enumerate() {
        let ps = &parents[i * DRAFT..(i + 1) * DRAFT];
        for t in 0..DRAFT {
            let rows: Vec<usize> = path(ps, t).into_iter().map(|u| i * DRAFT + u).collect();
            let (o, _) = oracle(&f.w, &input, &rows, Some(&before[i]));
            assert_close(&format!("verify request {i} step {t} out"), &Fixture::row(&out, i * DRAFT + t), o.last().unwrap());
        }
        assert_eq!(state_of(&f.pool, sl), before[i], "verify leaves request {i}'s state alone");
    }

    let commit_batch = CommitBatch::new(&f.pool, &s, &accepted.iter().map(|&a| Some(a)).collect::<Vec<_>>(), &vec![None; n]).unwrap();
    commit(&f.d, &mut f.pool, LAYER, &commit_batch).unwrap();
    for (i, &sl) in s.iter().enumerate() {
        let ps = &parents[i * DRAFT..(i + 1) * DRAFT];
        let rows: Vec<usize> = path(ps, accepted[i]).into_iter().map(|u| i * DRAFT + u).collect();
        let (_, st) = oracle(&f.w, &input, &rows, Some(&before[i]));
        assert_state(&format!("committed request {i} at step {}", accepted[i]), &state_of(&f.pool, sl), &st);
    }
}

#[test]
fn forward_verify_chain_on_the_npu_matches_the_oracle_and_commit_keeps_the_accepted_step() {
    verify_then_commit(23, &[-1, 0, 1, -1, 0, 1], &[1, 2]);
}

#[test]
fn forward_verify_tree_on_the_npu_matches_the_oracle_and_commit_keeps_the_accepted_step() {
    // Request 0: steps 1 and 2 both children of 0; request 1: two roots, step 2 a child of 1.
    verify_then_commit(24, &[-1, 0, 0, -1, -1, 1], &[2, 2]);
}
