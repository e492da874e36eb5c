//! The layer oracle (`oracle::layer_extend/decode/verify`) against the oracle
//! pieces chained by hand: conv1d → split into q, k, v → gate → delta rule,
//! each sequence (or draft path) from the slot's state, on random inputs and
//! states. The pieces take f32, so the hand chain rounds between stages; the
//! layer oracle does not, hence a tolerance of f32 rounding, not bitwise.

use deltanet_core::oracle::{self, error_ratio, SlotState};
use deltanet_core::*;

const TOL: f64 = 1e-6;

/// A small deterministic generator (xorshift): the test needs no rand.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }
}

struct World {
    dims: ModelDims,
    pool: StatePool<HostMemory, KMajor>,
    slots: Vec<Slot>,
    /// Each slot's state in its one layer, as imported.
    states: Vec<SlotState<f32>>,
    a_log: Vec<f32>,
    dt_bias: Vec<f32>,
    conv_w: Vec<f32>,
    conv_b: Vec<f32>,
    rng: Rng,
}

impl World {
    fn new(seed: u64) -> World {
        // HK 2 < HV 4 (grouped), K 8 != V 4: a swapped split or head lookup shows.
        let dims = ModelDims::builder().key_heads(2).value_heads(4).head_k_dim(8).head_v_dim(4).conv_width(4).build().unwrap();
        let config = PoolConfig::builder(dims).layers(1).slots(6).speculative(3).build().unwrap();
        let mut pool = StatePool::new(HostMemory, config, &Capabilities::host_reference(LayoutKind::KMajor)).unwrap();
        let mut rng = Rng(seed);
        let slots = pool.alloc(5).unwrap();
        let mut states = Vec::new();
        for &s in &slots {
            let st = SlotState { conv: rng.uniform(dims.conv_elems(), -1.0, 1.0), state: rng.uniform(dims.state_elems(), -0.5, 0.5) };
            pool.import(s, &HostState::from_f32(1, dims, DType::F32, DType::F32, &st.state, &st.conv).unwrap()).unwrap();
            states.push(st);
        }
        let (hv, c, w) = (dims.num_v_heads, dims.conv_dim(), dims.conv_width);
        World {
            a_log: rng.uniform(hv, -3.0, 0.5),
            dt_bias: rng.uniform(hv, -1.0, 1.0),
            conv_w: rng.uniform(c * w, -0.6, 0.6),
            conv_b: rng.uniform(c, -0.2, 0.2),
            dims,
            pool,
            slots,
            states,
            rng,
        }
    }

    fn weights(&self) -> LayerWeights<'_> {
        let (hv, c) = (self.dims.num_v_heads, self.dims.conv_dim());
        LayerWeights {
            a_log: TensorRef::from_slice(&self.a_log, &[hv]).unwrap(),
            dt_bias: TensorRef::from_slice(&self.dt_bias, &[hv]).unwrap(),
            conv_weight: TensorRef::from_slice(&self.conv_w, &[c, self.dims.conv_width]).unwrap(),
            conv_bias: Some(TensorRef::from_slice(&self.conv_b, &[c]).unwrap()),
        }
    }

    /// Random `(mixed_qkv, a, b)` for `t` tokens.
    fn inputs(&mut self, t: usize) -> [Vec<f32>; 3] {
        let (hv, c) = (self.dims.num_v_heads, self.dims.conv_dim());
        [self.rng.uniform(t * c, -1.5, 1.5), self.rng.uniform(t * hv, -2.0, 2.0), self.rng.uniform(t * hv, -2.0, 2.0)]
    }

    /// The pieces chained by hand over the tokens `path` as one sequence from `start`:
    /// `(o [len, HV, V], conv state, recurrent state)`.
    fn by_hand(&self, x: &[Vec<f32>; 3], path: &[usize], start: &SlotState<f32>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let d = &self.dims;
        let (hk, hv, k, c) = (d.num_k_heads, d.num_v_heads, d.head_k_dim, d.conv_dim());
        let rows = |v: &[f32], per: usize| path.iter().flat_map(|&t| v[t * per..(t + 1) * per].to_vec()).collect::<Vec<f32>>();
        let cu = [0, path.len()];
        let conv = oracle::causal_conv1d(&rows(&x[0], c), &self.conv_w, Some(&self.conv_b), c, d.conv_width, &cu, Some(&start.conv));
        let part = |lo: usize, hi: usize| conv.out.chunks(c).flat_map(|r| r[lo..hi].iter().map(|&v| v as f32)).collect::<Vec<f32>>();
        let (g, beta) = oracle::gate(&rows(&x[1], hv), &rows(&x[2], hv), &self.a_log, &self.dt_bias);
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let out = oracle::gated_delta_rule(
            d,
            &DeltaParams::new(d),
            &part(0, hk * k),
            &part(hk * k, 2 * hk * k),
            &part(2 * hk * k, c),
            &f32s(g),
            &f32s(beta),
            &cu,
            Some(&start.state),
        );
        (out.o, conv.conv_state, out.final_state)
    }
}

fn views<'a>(x: &'a [Vec<f32>; 3], t: usize, dims: &ModelDims) -> LayerInput<'a> {
    LayerInput {
        mixed_qkv: TensorRef::from_slice(&x[0], &[t, dims.conv_dim()]).unwrap(),
        a: TensorRef::from_slice(&x[1], &[t, dims.num_v_heads]).unwrap(),
        b: TensorRef::from_slice(&x[2], &[t, dims.num_v_heads]).unwrap(),
    }
}

fn assert_state(name: &str, got: &SlotState<f64>, conv: &[f64], state: &[f64]) {
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let r = got.error_ratio(&SlotState { conv: f32s(conv), state: f32s(state) });
    assert!(r < TOL, "{name}: state ratio {r:e}");
}

#[test]
fn extend_with_snapshots_and_fresh_sequences() {
    let mut w = World::new(0x1a7e5);
    let lens = [5usize, 9, 1];
    let cu = [0, 5, 14, 15];
    let x = w.inputs(15);
    let seqs = &w.slots[..3];
    let (snap_a, snap_b) = (w.slots[3], w.slots[4]);
    let b = ExtendBatch::new(&w.pool, &cu, seqs, &[true, false, true])
        .unwrap()
        .with_snapshots(&w.pool, &[Snapshot { seq: 1, position: 6, slot: snap_a }, Snapshot { seq: 1, position: 2, slot: snap_b }])
        .unwrap();
    let r = oracle::layer_extend(&w.pool, 0, &b, &w.weights(), &views(&x, 15, &w.dims), DeltaParams::new(&w.dims)).unwrap();
    let zeros = SlotState { conv: vec![0.0; w.dims.conv_elems()], state: vec![0.0; w.dims.state_elems()] };
    let row = w.dims.num_v_heads * w.dims.head_v_dim;
    for i in 0..3 {
        let start = if i == 1 { &zeros } else { &w.states[i] };
        let (o, conv, state) = w.by_hand(&x, &(cu[i]..cu[i + 1]).collect::<Vec<_>>(), start);
        let got: Vec<f32> = r.o[cu[i] * row..cu[i + 1] * row].iter().map(|&v| v as f32).collect();
        assert!(error_ratio(&got, &o) < TOL, "sequence {i} of {lens:?}: o");
        assert_state(&format!("sequence {i}"), &r.after[i], &conv, &state);
    }
    for (j, position) in [6usize, 2].into_iter().enumerate() {
        let (_, conv, state) = w.by_hand(&x, &(5..5 + position).collect::<Vec<_>>(), &zeros);
        assert_state(&format!("snapshot {j}"), &r.snapshots[j], &conv, &state);
    }
}

#[test]
fn decode_is_one_token_per_slot() {
    let mut w = World::new(0xdec0de);
    let x = w.inputs(4);
    let b = DecodeBatch::new(&w.pool, &w.slots[1..5]).unwrap();
    let r = oracle::layer_decode(&w.pool, 0, &b, &w.weights(), &views(&x, 4, &w.dims), DeltaParams::new(&w.dims)).unwrap();
    let row = w.dims.num_v_heads * w.dims.head_v_dim;
    for i in 0..4 {
        let (o, conv, state) = w.by_hand(&x, &[i], &w.states[i + 1]);
        let got: Vec<f32> = r.o[i * row..(i + 1) * row].iter().map(|&v| v as f32).collect();
        assert!(error_ratio(&got, &o) < TOL, "request {i}: o");
        assert_state(&format!("request {i}"), &r.after[i], &conv, &state);
    }
}

#[test]
fn verify_runs_each_step_along_its_tree_path() {
    let mut w = World::new(0x7ee);
    let d = 3;
    // Request 0 a chain, request 1 a tree (steps 1 and 2 both children of 0), request 2 all roots.
    let parents = [-1, 0, 1, -1, 0, 0, -1, -1, -1];
    let paths: [&[usize]; 9] = [&[0], &[0, 1], &[0, 1, 2], &[0], &[0, 1], &[0, 2], &[0], &[1], &[2]];
    let x = w.inputs(9);
    let b = VerifyBatch::tree(&w.pool, &w.slots[..3], &parents).unwrap();
    let r = oracle::layer_verify(&w.pool, 0, &b, &w.weights(), &views(&x, 9, &w.dims), DeltaParams::new(&w.dims)).unwrap();
    let row = w.dims.num_v_heads * w.dims.head_v_dim;
    for (n, path) in paths.iter().enumerate() {
        let i = n / d;
        let tokens: Vec<usize> = path.iter().map(|&t| i * d + t).collect();
        let (o, conv, state) = w.by_hand(&x, &tokens, &w.states[i]);
        let got: Vec<f32> = r.o[n * row..(n + 1) * row].iter().map(|&v| v as f32).collect();
        assert!(error_ratio(&got, &o[(path.len() - 1) * row..]) < TOL, "step {n}: o");
        assert_state(&format!("step {n}"), &r.after[n], &conv, &state);
    }
}

#[test]
fn refuses_what_the_forward_refuses() {
    let mut w = World::new(5);
    let x = w.inputs(2);
    let b = DecodeBatch::new(&w.pool, &w.slots[..1]).unwrap();
    let p = DeltaParams::new(&w.dims);
    // Two tokens of inputs for a one-token batch, and a layer the pool does not have.
    assert!(matches!(oracle::layer_decode(&w.pool, 0, &b, &w.weights(), &views(&x, 2, &w.dims), p), Err(Error::ShapeMismatch { .. })));
    let x = w.inputs(1);
    assert!(matches!(oracle::layer_decode(&w.pool, 1, &b, &w.weights(), &views(&x, 1, &w.dims), p), Err(Error::LayerOutOfRange { .. })));
}
