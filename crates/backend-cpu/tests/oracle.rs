//! The CPU kernels against the f64 oracle at the tolerances, with
//! fresh random inputs: f32 2e-6 (outputs and final state, T up to 4096),
//! bf16/f16 inputs 2e-6 against the oracle on the rounded inputs (f32
//! outputs), bf16 state 5e-3 after 4096 tokens; odd K/V, HV/HK 1, 2, 4,
//! grouped and tiled; decode and verify chains against the oracle too.

use deltanet_backend_cpu::{CpuDispatcher, CpuKMajor, CpuVMajor};
use deltanet_core::oracle::{error_ratio, gated_delta_rule};
use deltanet_core::*;
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    init: Vec<f32>,
}

fn inputs(dims: &ModelDims, t: usize, n: usize, seed: u64) -> Inputs {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    let mut u = |len: usize, lo: f32, hi: f32| -> Vec<f32> { (0..len).map(|_| r.gen_range(lo..hi)).collect() };
    let q = u(t * hk * k, -1.0, 1.0);
    let kk = u(t * hk * k, -1.0, 1.0);
    let vv = u(t * hv * v, -1.0, 1.0);
    let g = u(t * hv, 0.5, 1.0).into_iter().map(f32::ln).collect();
    let beta = u(t * hv, 0.05, 1.0);
    let init = u(n * hv * k * v, -1.0, 1.0);
    Inputs { q, k: kk, v: vv, g, beta, init }
}

fn round<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&a| T::from_f32(a)).collect()
}

fn widen<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|a| a.to_f32()).collect()
}

/// Runs one extend of packed sequences `lens` (state dtype `sd`, inputs of
/// element type `T`, f32 outputs); returns (outputs, canonical final states).
fn run_extend<L: StateLayout, T: Element>(
    d: &CpuDispatcher<L>,
    dims: ModelDims,
    sd: DType,
    lens: &[usize],
    init: bool,
    x: &Inputs,
) -> (Vec<f32>, Vec<f32>) {
    let n = lens.len();
    let mut cu = vec![0];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    let t = cu[n];
    let mut pool = d.new_pool(PoolConfig::new(1, n, dims).with_state_dtype(sd)).unwrap();
    let slots = pool.alloc(n).unwrap();
    let per = dims.state_elems();
    for (i, s) in slots.iter().enumerate() {
        let st = HostState::from_f32(1, dims, sd, DType::F32, &x.init[i * per..(i + 1) * per], &vec![0.0; dims.conv_elems()]).unwrap();
        pool.import(*s, &st).unwrap();
    }
    let batch = ExtendBatch::new(&pool, &cu, &slots, &vec![init; n]).unwrap();
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    let (q, kk, vv, beta) = (round::<T>(&x.q), round::<T>(&x.k), round::<T>(&x.v), round::<T>(&x.beta));
    let mut o = vec![0f32; t * hv * v];
    let io = DeltaIo {
        q: TensorRef::from_slice(&q, &[t, hk, k]).unwrap(),
        k: TensorRef::from_slice(&kk, &[t, hk, k]).unwrap(),
        v: TensorRef::from_slice(&vv, &[t, hv, v]).unwrap(),
        g: TensorRef::from_slice(&x.g[..t * hv], &[t, hv]).unwrap(),
        beta: TensorRef::from_slice(&beta, &[t, hv]).unwrap(),
        o: TensorMut::from_slice(&mut o, &[t, hv, v]).unwrap(),
        params: DeltaParams::new(&dims),
    };
    d.extend(&mut pool, 0, &batch, io).unwrap();
    let fin: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect();
    (o, fin)
}

/// The oracle on the inputs as the kernel saw them (rounded through `T`, and
/// the initial state through the state dtype).
fn oracle<T: Element>(dims: ModelDims, sd: DType, lens: &[usize], init: bool, x: &Inputs) -> (Vec<f64>, Vec<f64>) {
    let mut cu = vec![0];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    let t = *cu.last().unwrap();
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    let r = |a: &[f32]| widen(&round::<T>(a));
    let init_s: Vec<f32> = x.init[..lens.len() * dims.state_elems()].iter().map(|&a| sd.round(a)).collect();
    let out = gated_delta_rule(
        &dims,
        &DeltaParams::new(&dims),
        &r(&x.q[..t * hk * k]),
        &r(&x.k[..t * hk * k]),
        &r(&x.v[..t * hv * v]),
        &x.g[..t * hv],
        &r(&x.beta[..t * hv]),
        &cu,
        init.then_some(&init_s[..]),
    );
    (out.o, out.final_state)
}

fn check<L: StateLayout, T: Element>(dims: ModelDims, sd: DType, lens: &[usize], init: bool, tol: f64, seed: u64) {
    let t: usize = lens.iter().sum();
    let x = inputs(&dims, t, lens.len(), seed);
    let d = CpuDispatcher::<L>::new();
    let (o, fin) = run_extend::<L, T>(&d, dims, sd, lens, init, &x);
    let (ro, rf) = oracle::<T>(dims, sd, lens, init, &x);
    let (eo, ef) = (error_ratio(&o, &ro), error_ratio(&fin, &rf));
    println!("{:?} {} inputs {} state {sd} lens {lens:?} init {init}: o {eo:.2e} state {ef:.2e}", L::KIND, T::DTYPE, dims.head_k_dim);
    assert!(eo <= tol && ef <= tol, "{:?} {dims:?} {} {sd} {lens:?} init={init}: o {eo:.3e} state {ef:.3e} > {tol:e}", L::KIND, T::DTYPE);
}

fn shapes() -> Vec<ModelDims> {
    vec![
        ModelDims::new(1, 1, 17, 48, 4).unwrap(),
        ModelDims::new(2, 4, 48, 17, 4).unwrap(),
        ModelDims::new(1, 4, 32, 32, 4).unwrap().with_head_mapping(HeadMapping::Tiled),
        ModelDims::new(2, 4, 64, 48, 4).unwrap(),
        ModelDims::new(1, 2, 128, 128, 4).unwrap(),
        ModelDims::new(1, 2, 24, 144, 4).unwrap(),
    ]
}

#[test]
fn f32_extend_matches_oracle_varlen_both_layouts() {
    for (i, dims) in shapes().into_iter().enumerate() {
        for init in [false, true] {
            let lens = [1, 63, 64, 65, 200];
            check::<KMajor, f32>(dims, DType::F32, &lens, init, tolerance::F32, 10 + i as u64);
            check::<VMajor, f32>(dims, DType::F32, &lens, init, tolerance::F32, 20 + i as u64);
        }
    }
}

#[test]
fn f32_extend_4096_tokens() {
    let dims = ModelDims::new(1, 2, 128, 128, 4).unwrap();
    for init in [false, true] {
        check::<KMajor, f32>(dims, DType::F32, &[4096], init, tolerance::F32, 31);
        check::<VMajor, f32>(dims, DType::F32, &[4096], init, tolerance::F32, 32);
    }
    let odd = ModelDims::new(1, 4, 17, 48, 4).unwrap();
    check::<VMajor, f32>(odd, DType::F32, &[4096, 5], true, tolerance::F32, 33);
}

#[test]
fn bf16_and_f16_inputs_f32_state() {
    for (i, dims) in shapes().into_iter().enumerate() {
        check::<KMajor, bf16>(dims, DType::F32, &[65, 130], true, tolerance::F32, 40 + i as u64);
        check::<VMajor, f16>(dims, DType::F32, &[65, 130], false, tolerance::F32, 50 + i as u64);
    }
    let dims = ModelDims::new(1, 2, 128, 128, 4).unwrap();
    check::<VMajor, bf16>(dims, DType::F32, &[4096], true, tolerance::F32, 60);
}

#[test]
fn bf16_state_4096_tokens() {
    let dims = ModelDims::new(1, 2, 128, 128, 4).unwrap();
    for init in [false, true] {
        check::<KMajor, f32>(dims, DType::BF16, &[4096], init, tolerance::BF16, 70);
        check::<VMajor, bf16>(dims, DType::BF16, &[4096], init, tolerance::BF16, 71);
    }
}

/// Decode token by token and verify chains against the oracle (f32 state).
#[test]
fn decode_and_verify_match_oracle() {
    for dims in shapes() {
        decode_verify::<KMajor>(dims);
        decode_verify::<VMajor>(dims);
    }
}

fn decode_verify<L: StateLayout>(dims: ModelDims) {
    let (n, steps, draft) = (3, 6, 3);
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    let x = inputs(&dims, n * steps, n, 80);
    let d = CpuDispatcher::<L>::new();
    let mut pool = d.new_pool(PoolConfig::new(2, n, dims).with_speculative(draft)).unwrap();
    let slots = pool.alloc(n).unwrap();
    let per = dims.state_elems();
    for (i, s) in slots.iter().enumerate() {
        let mut init = vec![0.0; 2 * per];
        init[per..].copy_from_slice(&x.init[i * per..(i + 1) * per]);
        pool.import(*s, &HostState::from_f32(2, dims, DType::F32, DType::F32, &init, &vec![0.0; 2 * dims.conv_elems()]).unwrap()).unwrap();
    }
    // token layout for the oracle: sequence i's tokens are rows i*steps..; decode step j takes row i*steps+j
    let row = |a: &[f32], w: usize, i: usize, j: usize| a[(i * steps + j) * w..(i * steps + j + 1) * w].to_vec();
    let gather = |a: &[f32], w: usize, j: usize| -> Vec<f32> { (0..n).flat_map(|i| row(a, w, i, j)).collect() };
    let mut o_all = vec![0f32; n * steps * hv * v];
    // verify the first `draft` tokens as a chain from the initial state, then decode all steps
    {
        let t = n * draft;
        let pick = |a: &[f32], w: usize| -> Vec<f32> { (0..n).flat_map(|i| (0..draft).flat_map(move |j| row(a, w, i, j))).collect() };
        let (q, kk, vv, g, b) = (pick(&x.q, hk * k), pick(&x.k, hk * k), pick(&x.v, hv * v), pick(&x.g, hv), pick(&x.beta, hv));
        let mut o = vec![0f32; t * hv * v];
        let before = pool.export(slots[0]).unwrap();
        let batch = VerifyBatch::chain(&pool, &slots).unwrap();
        let io = DeltaIo {
            q: TensorRef::from_slice(&q, &[t, hk, k]).unwrap(),
            k: TensorRef::from_slice(&kk, &[t, hk, k]).unwrap(),
            v: TensorRef::from_slice(&vv, &[t, hv, v]).unwrap(),
            g: TensorRef::from_slice(&g, &[t, hv]).unwrap(),
            beta: TensorRef::from_slice(&b, &[t, hv]).unwrap(),
            o: TensorMut::from_slice(&mut o, &[t, hv, v]).unwrap(),
            params: DeltaParams::new(&dims),
        };
        d.verify(&mut pool, 1, &batch, io).unwrap();
        assert_eq!(pool.export(slots[0]).unwrap(), before, "verify must not touch the main state");
        let cu: Vec<usize> = (0..=n).map(|i| i * draft).collect();
        let r = gated_delta_rule(&dims, &DeltaParams::new(&dims), &q, &kk, &vv, &g, &b, &cu, Some(&x.init[..n * per]));
        let e = error_ratio(&o, &r.o);
        assert!(e <= tolerance::F32, "verify outputs {e:e}");
    }
    for j in 0..steps {
        let (q, kk, vv, g, b) =
            (gather(&x.q, hk * k, j), gather(&x.k, hk * k, j), gather(&x.v, hv * v, j), gather(&x.g, hv, j), gather(&x.beta, hv, j));
        let mut o = vec![0f32; n * hv * v];
        let batch = DecodeBatch::new(&pool, &slots).unwrap();
        let io = DeltaIo {
            q: TensorRef::from_slice(&q, &[n, hk, k]).unwrap(),
            k: TensorRef::from_slice(&kk, &[n, hk, k]).unwrap(),
            v: TensorRef::from_slice(&vv, &[n, hv, v]).unwrap(),
            g: TensorRef::from_slice(&g, &[n, hv]).unwrap(),
            beta: TensorRef::from_slice(&b, &[n, hv]).unwrap(),
            o: TensorMut::from_slice(&mut o, &[n, hv, v]).unwrap(),
            params: DeltaParams::new(&dims),
        };
        d.decode(&mut pool, 1, &batch, io).unwrap();
        for i in 0..n {
            o_all[(i * steps + j) * hv * v..(i * steps + j + 1) * hv * v].copy_from_slice(&o[i * hv * v..(i + 1) * hv * v]);
        }
    }
    let cu: Vec<usize> = (0..=n).map(|i| i * steps).collect();
    let r = gated_delta_rule(&dims, &DeltaParams::new(&dims), &x.q, &x.k, &x.v, &x.g, &x.beta, &cu, Some(&x.init[..n * per]));
    let fin: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()[per..].to_vec()).collect();
    let (eo, ef) = (error_ratio(&o_all, &r.o), error_ratio(&fin, &r.final_state));
    assert!(eo <= tolerance::F32 && ef <= tolerance::F32, "{:?} {dims:?}: decode o {eo:e} state {ef:e}", L::KIND);
}

/// Splitting at multiples of 64 is bitwise one extend; snapshots do not change outputs.
#[test]
fn split_at_64_is_bitwise_and_threads_do_not_matter() {
    let dims = ModelDims::new(2, 4, 48, 17, 4).unwrap();
    let x = inputs(&dims, 300, 1, 90);
    let one = run_extend::<VMajor, f32>(&CpuVMajor::new(), dims, DType::F32, &[300], true, &x);
    let two = run_extend::<VMajor, f32>(&CpuVMajor::with_threads(2).unwrap(), dims, DType::F32, &[300], true, &x);
    assert_eq!(one.0, two.0);
    assert_eq!(one.1, two.1);
    // in a batch with other sequences: same bits for the first one
    let mut x3 = inputs(&dims, 300 + 77, 2, 91);
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    x3.q[..300 * hk * k].copy_from_slice(&x.q);
    x3.k[..300 * hk * k].copy_from_slice(&x.k);
    x3.v[..300 * hv * v].copy_from_slice(&x.v);
    x3.g[..300 * hv].copy_from_slice(&x.g);
    x3.beta[..300 * hv].copy_from_slice(&x.beta);
    x3.init[..dims.state_elems()].copy_from_slice(&x.init);
    let b = run_extend::<VMajor, f32>(&CpuVMajor::with_threads(2).unwrap(), dims, DType::F32, &[300, 77], true, &x3);
    assert_eq!(&b.0[..300 * hv * v], &one.0[..]);
    assert_eq!(&b.1[..dims.state_elems()], &one.1[..]);
    let _ = CpuKMajor::new();
}

/// Snapshots inside a chunk match the oracle at their position and leave the
/// outputs and final state bitwise unchanged.
#[test]
fn snapshots_inside_chunks() {
    for vmajor in [false, true] {
        let dims = ModelDims::new(1, 2, 17, 48, 4).unwrap();
        let len = 150;
        let x = inputs(&dims, len, 1, 100);
        let positions = [1usize, 37, 64, 100, 150];
        let run = |snap: bool| -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
            macro_rules! go {
                ($d:expr) => {{
                    let d = $d;
                    let mut pool = d.new_pool(PoolConfig::new(1, 8, dims)).unwrap();
                    let s = pool.alloc(1 + positions.len()).unwrap();
                    let per = dims.state_elems();
                    let st = HostState::from_f32(1, dims, DType::F32, DType::F32, &x.init[..per], &vec![0.0; dims.conv_elems()]).unwrap();
                    pool.import(s[0], &st).unwrap();
                    let mut batch = ExtendBatch::new(&pool, &[0, len], &s[..1], &[true]).unwrap();
                    if snap {
                        let sn: Vec<Snapshot> =
                            positions.iter().zip(&s[1..]).map(|(&p, &slot)| Snapshot { seq: 0, position: p, slot }).collect();
                        batch = batch.with_snapshots(&pool, &sn).unwrap();
                    }
                    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
                    let mut o = vec![0f32; len * hv * v];
                    let io = DeltaIo {
                        q: TensorRef::from_slice(&x.q, &[len, hk, k]).unwrap(),
                        k: TensorRef::from_slice(&x.k, &[len, hk, k]).unwrap(),
                        v: TensorRef::from_slice(&x.v, &[len, hv, v]).unwrap(),
                        g: TensorRef::from_slice(&x.g, &[len, hv]).unwrap(),
                        beta: TensorRef::from_slice(&x.beta, &[len, hv]).unwrap(),
                        o: TensorMut::from_slice(&mut o, &[len, hv, v]).unwrap(),
                        params: DeltaParams::new(&dims),
                    };
                    d.extend(&mut pool, 0, &batch, io).unwrap();
                    let fin = pool.export(s[0]).unwrap().temporal_f32();
                    let snaps = s[1..].iter().map(|&sl| pool.export(sl).unwrap().temporal_f32()).collect();
                    (o, fin, snaps)
                }};
            }
            if vmajor {
                go!(CpuVMajor::new())
            } else {
                go!(CpuKMajor::new())
            }
        };
        let (o1, f1, _) = run(false);
        let (o2, f2, snaps) = run(true);
        assert_eq!(o1, o2, "snapshots changed the outputs");
        assert_eq!(f1, f2, "snapshots changed the final state");
        for (p, st) in positions.iter().zip(&snaps) {
            let r = gated_delta_rule(&dims, &DeltaParams::new(&dims), &x.q, &x.k, &x.v, &x.g, &x.beta, &[0, *p], Some(&x.init));
            let e = error_ratio(st, &r.final_state);
            assert!(e <= tolerance::F32, "snapshot at {p}: {e:e}");
        }
    }
}

/// A verified chain committed at step a is bitwise the state a+1 decodes give,
/// for f32 and bf16 state, on both layouts, with V below one register block
/// (17) and beyond one column block (144: the K-major decode's vector paths).
#[test]
fn verify_commit_is_bitwise_decode() {
    fn go<L: StateLayout>(dims: ModelDims, sd: DType) {
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let draft = 4;
        let x = inputs(&dims, draft, 1, 110);
        let d = CpuDispatcher::<L>::with_threads(2).unwrap();
        let mut pool = d.new_pool(PoolConfig::new(1, 2, dims).with_state_dtype(sd).with_speculative(draft)).unwrap();
        let s = pool.alloc(2).unwrap();
        let per = dims.state_elems();
        for sl in &s {
            let st = HostState::from_f32(1, dims, sd, DType::F32, &x.init[..per], &vec![0.0; dims.conv_elems()]).unwrap();
            pool.import(*sl, &st).unwrap();
        }
        type Rows = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);
        let io = |o: &mut Vec<f32>, a: usize, b: usize| -> Rows {
            let _ = o;
            (
                x.q[a * hk * k..b * hk * k].to_vec(),
                x.k[a * hk * k..b * hk * k].to_vec(),
                x.v[a * hv * v..b * hv * v].to_vec(),
                x.g[a * hv..b * hv].to_vec(),
                x.beta[a * hv..b * hv].to_vec(),
            )
        };
        // verify the chain on slot 0
        let mut ov = vec![0f32; draft * hv * v];
        let (q, kk, vv, g, b) = io(&mut ov, 0, draft);
        let batch = VerifyBatch::chain(&pool, &s[..1]).unwrap();
        let dio = DeltaIo {
            q: TensorRef::from_slice(&q, &[draft, hk, k]).unwrap(),
            k: TensorRef::from_slice(&kk, &[draft, hk, k]).unwrap(),
            v: TensorRef::from_slice(&vv, &[draft, hv, v]).unwrap(),
            g: TensorRef::from_slice(&g, &[draft, hv]).unwrap(),
            beta: TensorRef::from_slice(&b, &[draft, hv]).unwrap(),
            o: TensorMut::from_slice(&mut ov, &[draft, hv, v]).unwrap(),
            params: DeltaParams::new(&dims),
        };
        d.verify(&mut pool, 0, &batch, dio).unwrap();
        let a = 2;
        let cb = CommitBatch::new(&pool, &s[..1], &[Some(a)], &[]).unwrap();
        d.commit(&mut pool, 0, &cb).unwrap();
        // decode a+1 tokens on slot 1
        for t in 0..=a {
            let mut od = vec![0f32; hv * v];
            let (q, kk, vv, g, b) = io(&mut od, t, t + 1);
            let batch = DecodeBatch::new(&pool, &s[1..]).unwrap();
            let dio = DeltaIo {
                q: TensorRef::from_slice(&q, &[1, hk, k]).unwrap(),
                k: TensorRef::from_slice(&kk, &[1, hk, k]).unwrap(),
                v: TensorRef::from_slice(&vv, &[1, hv, v]).unwrap(),
                g: TensorRef::from_slice(&g, &[1, hv]).unwrap(),
                beta: TensorRef::from_slice(&b, &[1, hv]).unwrap(),
                o: TensorMut::from_slice(&mut od, &[1, hv, v]).unwrap(),
                params: DeltaParams::new(&dims),
            };
            d.decode(&mut pool, 0, &batch, dio).unwrap();
            assert_eq!(&od[..], &ov[t * hv * v..(t + 1) * hv * v], "{:?} {sd}: output of step {t}", L::KIND);
        }
        assert_eq!(pool.export(s[0]).unwrap().temporal, pool.export(s[1]).unwrap().temporal, "{:?} {sd}", L::KIND);
    }
    for dims in [ModelDims::new(2, 4, 48, 17, 4).unwrap(), ModelDims::new(1, 2, 32, 144, 4).unwrap()] {
        for sd in [DType::F32, DType::BF16] {
            go::<KMajor>(dims, sd);
            go::<VMajor>(dims, sd);
        }
    }
}

/// The rows `rows` of every per-token input and the initial states of `seqs`.
fn gather_inputs(dims: &ModelDims, x: &Inputs, rows: &[usize], seqs: &[usize]) -> Inputs {
    let (hk, hv, k, v, per) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim, dims.state_elems());
    let pick = |a: &[f32], w: usize, idx: &[usize]| -> Vec<f32> { idx.iter().flat_map(|&r| a[r * w..(r + 1) * w].to_vec()).collect() };
    Inputs {
        q: pick(&x.q, hk * k, rows),
        k: pick(&x.k, hk * k, rows),
        v: pick(&x.v, hv * v, rows),
        g: pick(&x.g, hv, rows),
        beta: pick(&x.beta, hv, rows),
        init: pick(&x.init, per, seqs),
    }
}

/// One decode of `n` requests (row i is request i's token) from the states in `x.init`; (outputs, final states).
fn run_decode<L: StateLayout>(d: &CpuDispatcher<L>, dims: ModelDims, sd: DType, n: usize, x: &Inputs) -> (Vec<f32>, Vec<f32>) {
    let mut pool = d.new_pool(PoolConfig::new(1, n, dims).with_state_dtype(sd)).unwrap();
    let slots = pool.alloc(n).unwrap();
    let per = dims.state_elems();
    for (i, s) in slots.iter().enumerate() {
        let st = HostState::from_f32(1, dims, sd, DType::F32, &x.init[i * per..(i + 1) * per], &vec![0.0; dims.conv_elems()]).unwrap();
        pool.import(*s, &st).unwrap();
    }
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    let mut o = vec![0f32; n * hv * v];
    let io = DeltaIo {
        q: TensorRef::from_slice(&x.q, &[n, hk, k]).unwrap(),
        k: TensorRef::from_slice(&x.k, &[n, hk, k]).unwrap(),
        v: TensorRef::from_slice(&x.v, &[n, hv, v]).unwrap(),
        g: TensorRef::from_slice(&x.g, &[n, hv]).unwrap(),
        beta: TensorRef::from_slice(&x.beta, &[n, hv]).unwrap(),
        o: TensorMut::from_slice(&mut o, &[n, hv, v]).unwrap(),
        params: DeltaParams::new(&dims),
    };
    let batch = DecodeBatch::new(&pool, &slots).unwrap();
    d.decode(&mut pool, 0, &batch, io).unwrap();
    let fin: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect();
    (o, fin)
}

/// A mixed step: prefill chunks and 1-token sequences in one extend call.
/// Against the oracle; the 1-token sequences bitwise equal to a decode of
/// their tokens (they run the decode path), the prefill sequences bitwise
/// equal to an extend of them alone (batch independence); both layouts,
/// f32 and bf16 state.
#[test]
fn mixed_step_matches_oracle_and_decode() {
    fn go<L: StateLayout>(dims: ModelDims, sd: DType, seed: u64) {
        let lens = [130usize, 1, 65, 1, 1];
        let t: usize = lens.iter().sum();
        let x = inputs(&dims, t, lens.len(), seed);
        let d = CpuDispatcher::<L>::with_threads(2).unwrap();
        let (o, fin) = run_extend::<L, f32>(&d, dims, sd, &lens, true, &x);
        let (ro, rf) = oracle::<f32>(dims, sd, &lens, true, &x);
        let tol = if sd == DType::F32 { tolerance::F32 } else { tolerance::BF16 };
        let (eo, ef) = (error_ratio(&o, &ro), error_ratio(&fin, &rf));
        assert!(eo <= tol && ef <= tol, "{:?} {sd}: mixed step o {eo:e} state {ef:e}", L::KIND);
        let (per_o, per) = (dims.num_v_heads * dims.head_v_dim, dims.state_elems());
        // the 1-token sequences (rows 130, 196, 197) == one decode of those tokens
        let (dec_rows, dec_seqs) = ([130usize, 196, 197], [1usize, 3, 4]);
        let (od, fd) = run_decode::<L>(&d, dims, sd, 3, &gather_inputs(&dims, &x, &dec_rows, &dec_seqs));
        for (i, (&r, &s)) in dec_rows.iter().zip(&dec_seqs).enumerate() {
            assert_eq!(&o[r * per_o..(r + 1) * per_o], &od[i * per_o..(i + 1) * per_o], "{:?} {sd}: output of seq {s}", L::KIND);
            assert_eq!(&fin[s * per..(s + 1) * per], &fd[i * per..(i + 1) * per], "{:?} {sd}: state of seq {s}", L::KIND);
        }
        // the prefill sequences == an extend of them alone
        let rows: Vec<usize> = (0..130).chain(131..196).collect();
        let (oe, fe) = run_extend::<L, f32>(&d, dims, sd, &[130, 65], true, &gather_inputs(&dims, &x, &rows, &[0, 2]));
        for (i, &r) in rows.iter().enumerate() {
            assert_eq!(&o[r * per_o..(r + 1) * per_o], &oe[i * per_o..(i + 1) * per_o], "{:?} {sd}: row {r}", L::KIND);
        }
        assert_eq!(&fin[..per], &fe[..per]);
        assert_eq!(&fin[2 * per..3 * per], &fe[per..]);
    }
    for (i, dims) in [ModelDims::new(2, 4, 48, 17, 4).unwrap(), ModelDims::new(1, 2, 128, 128, 4).unwrap()].into_iter().enumerate() {
        for sd in [DType::F32, DType::BF16] {
            go::<KMajor>(dims, sd, 110 + i as u64);
            go::<VMajor>(dims, sd, 120 + i as u64);
        }
    }
}
