//! Issue 10 item 6: a non-finite input at token t of a chunked extend spoils
//! only tokens >= t of its own sequence (the f64 oracle, token by token, is
//! the reference for tokens < t); and with the pool's finite check on, such a
//! call is refused with `Error::NonFinite` naming sequence and token, with
//! every pool byte unchanged.

use deltanet_backend_cpu::{CpuDispatcher, CpuKMajor, CpuVMajor};
use deltanet_core::oracle::{error_ratio, gated_delta_rule};
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LENS: [usize; 2] = [130, 70];
const BAD: usize = 100; // a token of sequence 0 inside its second chunk (64..128)

fn dims() -> ModelDims {
    ModelDims::new(1, 2, 32, 24, 4).unwrap()
}

#[derive(Clone)]
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    init: Vec<f32>,
}

fn inputs(seed: u64) -> Inputs {
    let m = dims();
    let t: usize = LENS.iter().sum();
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut u = |len: usize, lo: f32, hi: f32| -> Vec<f32> { (0..len).map(|_| r.gen_range(lo..hi)).collect() };
    Inputs {
        q: u(t * m.num_k_heads * m.head_k_dim, -1.0, 1.0),
        k: u(t * m.num_k_heads * m.head_k_dim, -1.0, 1.0),
        v: u(t * m.num_v_heads * m.head_v_dim, -1.0, 1.0),
        g: u(t * m.num_v_heads, 0.5, 1.0).into_iter().map(f32::ln).collect(),
        beta: u(t * m.num_v_heads, 0.05, 1.0),
        init: u(LENS.len() * m.state_elems(), -1.0, 1.0),
    }
}

fn cu() -> Vec<usize> {
    vec![0, LENS[0], LENS[0] + LENS[1]]
}

fn pool_with<L: StateLayout>(d: &CpuDispatcher<L>, cfg: PoolConfig, x: &Inputs) -> (PoolOf<CpuDispatcher<L>>, Vec<Slot>) {
    let m = dims();
    let mut pool = d.new_pool(cfg).unwrap();
    let slots = pool.alloc(LENS.len()).unwrap();
    for (i, &s) in slots.iter().enumerate() {
        let st = &x.init[i * m.state_elems()..(i + 1) * m.state_elems()];
        let conv = vec![0.25; m.conv_elems()];
        pool.import(s, &HostState::from_f32(1, m, DType::F32, DType::F32, st, &conv).unwrap()).unwrap();
    }
    (pool, slots)
}

/// One extend of both sequences from their slots; (outputs, canonical final states).
fn extend<L: StateLayout>(d: &CpuDispatcher<L>, x: &Inputs) -> (Vec<f32>, Vec<f32>) {
    let m = dims();
    let (mut pool, slots) = pool_with(d, PoolConfig::new(1, LENS.len(), m), x);
    let t = cu()[2];
    let mut o = vec![0f32; t * m.num_v_heads * m.head_v_dim];
    let batch = ExtendBatch::new(&pool, &cu(), &slots, &[true, true]).unwrap();
    let io = DeltaIo {
        q: TensorRef::from_slice(&x.q, &[t, m.num_k_heads, m.head_k_dim]).unwrap(),
        k: TensorRef::from_slice(&x.k, &[t, m.num_k_heads, m.head_k_dim]).unwrap(),
        v: TensorRef::from_slice(&x.v, &[t, m.num_v_heads, m.head_v_dim]).unwrap(),
        g: TensorRef::from_slice(&x.g, &[t, m.num_v_heads]).unwrap(),
        beta: TensorRef::from_slice(&x.beta, &[t, m.num_v_heads]).unwrap(),
        o: TensorMut::from_slice(&mut o, &[t, m.num_v_heads, m.head_v_dim]).unwrap(),
        params: DeltaParams::new(&m),
    };
    d.extend(&mut pool, 0, &batch, io).unwrap();
    let states = slots.iter().flat_map(|&s| pool.export(s).unwrap().temporal_f32()).collect();
    (o, states)
}

/// Puts `value` into the input named `what` at packed token `BAD`, value head 1 (or key head 0).
fn poison(x: &mut Inputs, what: &str, value: f32) {
    let m = dims();
    let (kd, vd, hv) = (m.head_k_dim, m.head_v_dim, m.num_v_heads);
    match what {
        "q" => x.q[BAD * kd + 3] = value,
        "k" => x.k[BAD * kd + 5] = value,
        "v" => x.v[(BAD * hv + 1) * vd + 2] = value,
        "g" => x.g[BAD * hv + 1] = value,
        "beta" => x.beta[BAD * hv + 1] = value,
        _ => unreachable!(),
    }
}

fn causal_on<L: StateLayout>(d: CpuDispatcher<L>) {
    let m = dims();
    let per_o = m.num_v_heads * m.head_v_dim;
    let clean = inputs(11);
    let (o_clean, st_clean) = extend(&d, &clean);
    for what in ["g", "v", "beta", "k", "q"] {
        for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = clean.clone();
            poison(&mut x, what, value);
            let (o, st) = extend(&d, &x);
            let case = format!("{} {what} = {value} at token {BAD}", L::KIND.name());
            // tokens < BAD of sequence 0: finite and as the token-by-token oracle says
            let early = &o[..BAD * per_o];
            assert!(early.iter().all(|v| v.is_finite()), "{case}: a token before it is non-finite");
            let r = gated_delta_rule(&m, &DeltaParams::new(&m), &x.q, &x.k, &x.v, &x.g, &x.beta, &cu(), Some(&x.init));
            let e = error_ratio(early, &r.o[..BAD * per_o]);
            assert!(e <= tolerance::F32, "{case}: tokens before it vs the oracle: {e:e}");
            // the first chunk does not even see it: bitwise as without it
            assert_eq!(o[..64 * per_o], o_clean[..64 * per_o], "{case}: first chunk changed");
            // sequence 1 is untouched, bitwise
            assert_eq!(o[LENS[0] * per_o..], o_clean[LENS[0] * per_o..], "{case}: the other sequence changed");
            assert_eq!(st[m.state_elems()..], st_clean[m.state_elems()..], "{case}: the other sequence's state changed");
            if what == "g" && value == f32::NEG_INFINITY {
                // exp(-inf) = 0 forgets the state: finite, and the whole sequence is as the oracle says
                let e = error_ratio(&o[..LENS[0] * per_o], &r.o[..LENS[0] * per_o]);
                assert!(e <= tolerance::F32, "{case}: sequence vs the oracle: {e:e}");
                continue;
            }
            // the token itself is spoiled (documented behaviour), a state input spoils the state
            assert!(o[BAD * per_o..(BAD + 1) * per_o].iter().any(|v| !v.is_finite()), "{case}: token itself finite?");
            if what != "q" {
                assert!(st[..m.state_elems()].iter().any(|v| !v.is_finite()), "{case}: final state finite?");
            }
        }
    }
}

#[test]
fn a_non_finite_input_never_reaches_earlier_tokens_kmajor() {
    causal_on(CpuKMajor::new());
}

#[test]
fn a_non_finite_input_never_reaches_earlier_tokens_vmajor() {
    causal_on(CpuVMajor::new());
}

/// Every slot's export and the digest of every buffer.
fn everything<P: MambaStatePool>(pool: &P, slots: &[Slot]) -> (Vec<HostState>, u64) {
    (slots.iter().map(|&s| pool.export(s).unwrap()).collect(), pool.digest().unwrap())
}

#[test]
fn finite_check_refuses_before_writing() {
    let d = CpuVMajor::new();
    let m = dims();
    let t = cu()[2];
    for (what, value, seq, token) in [("v", f32::NAN, 0, BAD), ("beta", f32::INFINITY, 0, BAD), ("q", f32::NAN, 0, BAD)] {
        let mut x = inputs(12);
        poison(&mut x, what, value);
        // and a later token of sequence 1: the first in packed order is named
        x.g[(LENS[0] + 40) * m.num_v_heads] = f32::NAN;
        let (mut pool, slots) = pool_with(&d, PoolConfig::new(1, 3, m).with_speculative(2).with_finite_check(), &x);
        let snap = pool.alloc(1).unwrap()[0];
        let all = [slots[0], slots[1], snap];
        let before = everything(&pool, &all);
        let batch = ExtendBatch::new(&pool, &cu(), &slots, &[true, true])
            .unwrap()
            .with_snapshots(&pool, &[Snapshot { seq: 0, position: 10, slot: snap }])
            .unwrap();
        let mut o = vec![7f32; t * m.num_v_heads * m.head_v_dim];
        let io = DeltaIo {
            q: TensorRef::from_slice(&x.q, &[t, m.num_k_heads, m.head_k_dim]).unwrap(),
            k: TensorRef::from_slice(&x.k, &[t, m.num_k_heads, m.head_k_dim]).unwrap(),
            v: TensorRef::from_slice(&x.v, &[t, m.num_v_heads, m.head_v_dim]).unwrap(),
            g: TensorRef::from_slice(&x.g, &[t, m.num_v_heads]).unwrap(),
            beta: TensorRef::from_slice(&x.beta, &[t, m.num_v_heads]).unwrap(),
            o: TensorMut::from_slice(&mut o, &[t, m.num_v_heads, m.head_v_dim]).unwrap(),
            params: DeltaParams::new(&m),
        };
        let r = d.extend(&mut pool, 0, &batch, io);
        assert_eq!(r, Err(Error::NonFinite { seq, token, what: format!("input `{what}`") }));
        assert!(everything(&pool, &all) == before, "{what}: refused extend changed the pool");
        assert!(o.iter().all(|&v| v == 7.0), "{what}: refused extend wrote outputs");

        // a decode whose second request starts from a non-finite state
        let mut st = pool.export(slots[1]).unwrap();
        let mut vals = st.temporal_f32();
        vals[17] = f32::NAN;
        st = HostState::from_f32(1, m, DType::F32, DType::F32, &vals, &st.conv_f32()).unwrap();
        pool.import(slots[1], &st).unwrap();
        let before = everything(&pool, &all);
        let clean = inputs(13);
        let mut o = vec![7f32; 2 * m.num_v_heads * m.head_v_dim];
        let db = DecodeBatch::new(&pool, &slots).unwrap();
        let io = DeltaIo {
            q: TensorRef::from_slice(&clean.q[..2 * m.head_k_dim], &[2, 1, m.head_k_dim]).unwrap(),
            k: TensorRef::from_slice(&clean.k[..2 * m.head_k_dim], &[2, 1, m.head_k_dim]).unwrap(),
            v: TensorRef::from_slice(&clean.v[..2 * m.num_v_heads * m.head_v_dim], &[2, m.num_v_heads, m.head_v_dim]).unwrap(),
            g: TensorRef::from_slice(&clean.g[..2 * m.num_v_heads], &[2, m.num_v_heads]).unwrap(),
            beta: TensorRef::from_slice(&clean.beta[..2 * m.num_v_heads], &[2, m.num_v_heads]).unwrap(),
            o: TensorMut::from_slice(&mut o, &[2, m.num_v_heads, m.head_v_dim]).unwrap(),
            params: DeltaParams::new(&m),
        };
        let r = d.decode(&mut pool, 0, &db, io);
        assert!(matches!(r, Err(Error::NonFinite { seq: 1, token: 0, .. })), "{r:?}");
        assert!(everything(&pool, &all) == before, "refused decode changed the pool");
    }
}

#[test]
fn device_backends_refuse_the_finite_check() {
    let mut caps = Capabilities::host_reference(LayoutKind::KMajor);
    caps.device = Device::Cuda(0);
    let cfg = PoolConfig::new(1, 2, dims()).with_finite_check();
    assert!(matches!(caps.check_pool_config(&cfg), Err(Error::Unsupported { .. })));
    caps.device = Device::Host;
    caps.check_pool_config(&cfg).unwrap();
}
