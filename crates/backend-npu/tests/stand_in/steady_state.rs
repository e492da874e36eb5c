//! A serving step on the stand-in, after one warm-up step: every layer's
//! temporaries and index tables come from the stream's recycled scratch (no
//! device allocation), and every layer issues the same operators, on the
//! batch-only entry points (one-use plans: one table upload per operation,
//! printed). Planned steps (one upload per step, no host wait) are counted
//! in `step_plan.rs`.

use crate::common::{dims, A950};
use deltanet_backend_npu::testing::{Event, Recorder};
use deltanet_backend_npu::{NpuDispatcher, NpuMemory};
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

const LAYERS: usize = 30;
const CU: [usize; 4] = [0, 5, 70, 71];

fn tensor(d: &NpuDispatcher, rng: &mut ChaCha8Rng, dtype: DType, shape: &[usize]) -> DeviceTensor<NpuMemory> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(0.05f32..0.95) * if rng.gen() { 1.0 } else { -1.0 }).collect();
    DeviceTensor::from_f32(d.memory(), dtype, shape, &v).unwrap()
}

/// Runs one step over every layer; `extend` or decode of every slot.
#[allow(clippy::too_many_arguments)]
fn step(
    d: &NpuDispatcher,
    pool: &mut PoolOf<NpuDispatcher>,
    slots: &[Slot],
    weights: &[[DeviceTensor<NpuMemory>; 4]],
    ws: &mut LayerWorkspace<NpuMemory>,
    extend: bool,
    rng: &mut ChaCha8Rng,
    rec: &Recorder,
) -> (usize, usize, Vec<Vec<&'static str>>) {
    let m = dims();
    let t = if extend { CU[3] } else { slots.len() };
    let (hv, c) = (m.num_v_heads, m.conv_dim());
    let inputs: Vec<_> = (0..LAYERS)
        .map(|_| {
            [
                tensor(d, rng, DType::BF16, &[t, c]),
                tensor(d, rng, DType::BF16, &[t, hv]),
                tensor(d, rng, DType::BF16, &[t, hv]),
                DeviceTensor::zeros(d.memory(), DType::BF16, &[t, hv, m.head_v_dim]).unwrap(),
            ]
        })
        .collect();
    let eb = ExtendBatch::new(&*pool, &CU, slots, &[true; 3]).unwrap();
    let db = DecodeBatch::new(&*pool, slots).unwrap();
    let (mallocs, uploads) = (rec.mallocs(), rec.counts().uploads);
    rec.clear();
    let mut per_layer = Vec::new();
    for (l, (w, mut x)) in weights.iter().zip(inputs).enumerate() {
        let before = rec.events().len();
        let lw = LayerWeights { a_log: w[0].view(), dt_bias: w[1].view(), conv_weight: w[2].view(), conv_bias: Some(w[3].view()) };
        let [qkv, a, b, o] = &mut x;
        let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: b.view() };
        let params = DeltaParams::new(&m);
        if extend {
            forward_extend(d, pool, l, &eb, &lw, &input, params, ws, o.view_mut()).unwrap();
        } else {
            forward_decode(d, pool, l, &db, &lw, &input, params, ws, o.view_mut()).unwrap();
        }
        per_layer.push(
            rec.events()[before..]
                .iter()
                .map(|e| match e {
                    Event::Call(r) => r.op,
                    Event::Copy { .. } => "copy",
                    Event::Zero { .. } => "zero",
                    Event::Upload { .. } => "upload",
                    Event::Sync => "sync",
                })
                .collect(),
        );
    }
    (rec.mallocs() - mallocs, rec.counts().uploads - uploads, per_layer)
}

#[test]
fn after_a_warm_up_step_no_layer_allocates_and_every_layer_issues_the_same_calls() {
    let rec = Arc::new(Recorder::new(A950));
    let d = NpuDispatcher::with_api(rec.clone(), 0).unwrap();
    let cfg = PoolConfig::new(LAYERS, 4, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16);
    let mut pool = d.new_pool(cfg).unwrap();
    let slots = pool.alloc(3).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let m = dims();
    let (hv, c, w) = (m.num_v_heads, m.conv_dim(), m.conv_width);
    let weights: Vec<[DeviceTensor<NpuMemory>; 4]> = (0..LAYERS)
        .map(|_| {
            [
                tensor(&d, &mut rng, DType::F32, &[hv]),
                tensor(&d, &mut rng, DType::F32, &[hv]),
                tensor(&d, &mut rng, DType::F32, &[c, w]),
                tensor(&d, &mut rng, DType::F32, &[c]),
            ]
        })
        .collect();
    let mut ws = LayerWorkspace::new(d.memory().clone());
    for extend in [true, false] {
        let name = if extend { "extend" } else { "decode" };
        step(&d, &mut pool, &slots, &weights, &mut ws, extend, &mut rng, &rec);
        let (mallocs, uploads, per_layer) = step(&d, &mut pool, &slots, &weights, &mut ws, extend, &mut rng, &rec);
        assert_eq!(mallocs, 0, "{name}: device allocations in a step after the warm-up");
        assert!(per_layer.iter().all(|l| *l == per_layer[0]), "{name}: layers issue different calls");
        let ops = per_layer[0].iter().filter(|e| e.starts_with("aclnn")).count();
        let syncs = per_layer[0].iter().filter(|e| **e == "sync").count();
        println!("{name}, per layer: {ops} operator calls, {syncs} stream drains, {} table uploads", uploads / LAYERS);
    }
}
