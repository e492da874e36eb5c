//! Issue 10 item 5: slot generations and verify currency. Every misuse the
//! issue lists (commit without a verify, verify → decode → commit, commit of
//! a layer not verified, verify → free → re-allocate → commit, a batch built
//! before a free and re-allocation) is a typed error that leaves every pool
//! byte unchanged; the legal sequences still work.

mod support;

use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::Naive;

const LAYERS: usize = 2;
const DRAFT: usize = 3;

fn dims() -> ModelDims {
    ModelDims::new(1, 2, 4, 3, 3).unwrap()
}

type D = Naive<KMajor>;

fn setup(seed: u64) -> (D, PoolOf<D>, Vec<Slot>, ChaCha8Rng) {
    let d = D::new();
    let mut pool = d.new_pool(PoolConfig::new(LAYERS, 4, dims()).with_speculative(DRAFT)).unwrap();
    let slots = pool.alloc(3).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for &s in &slots {
        let t: Vec<f32> = (0..LAYERS * dims().state_elems()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let c: Vec<f32> = (0..LAYERS * dims().conv_elems()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        pool.import(s, &HostState::from_f32(LAYERS, dims(), DType::F32, DType::F32, &t, &c).unwrap()).unwrap();
    }
    (d, pool, slots, rng)
}

/// Random delta-rule inputs for `tokens` tokens.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    o: Vec<f32>,
}

impl Inputs {
    fn random(rng: &mut ChaCha8Rng, tokens: usize) -> Self {
        let m = dims();
        let mut r = |n: usize, lo: f32, hi: f32| (0..n).map(|_| rng.gen_range(lo..hi)).collect::<Vec<f32>>();
        Inputs {
            q: r(tokens * m.num_k_heads * m.head_k_dim, -1.0, 1.0),
            k: r(tokens * m.num_k_heads * m.head_k_dim, -1.0, 1.0),
            v: r(tokens * m.num_v_heads * m.head_v_dim, -1.0, 1.0),
            g: r(tokens * m.num_v_heads, -1.0, -0.01),
            beta: r(tokens * m.num_v_heads, 0.1, 0.9),
            o: vec![0.0; tokens * m.num_v_heads * m.head_v_dim],
        }
    }
    fn io(&mut self) -> DeltaIo<'_> {
        let m = dims();
        let t = self.g.len() / m.num_v_heads;
        DeltaIo {
            q: TensorRef::from_slice(&self.q, &[t, m.num_k_heads, m.head_k_dim]).unwrap(),
            k: TensorRef::from_slice(&self.k, &[t, m.num_k_heads, m.head_k_dim]).unwrap(),
            v: TensorRef::from_slice(&self.v, &[t, m.num_v_heads, m.head_v_dim]).unwrap(),
            g: TensorRef::from_slice(&self.g, &[t, m.num_v_heads]).unwrap(),
            beta: TensorRef::from_slice(&self.beta, &[t, m.num_v_heads]).unwrap(),
            o: TensorMut::from_slice(&mut self.o, &[t, m.num_v_heads, m.head_v_dim]).unwrap(),
            params: DeltaParams::new(&m),
        }
    }
}

fn verify(d: &D, pool: &mut PoolOf<D>, layer: usize, slots: &[Slot], rng: &mut ChaCha8Rng) {
    let vb = VerifyBatch::chain(pool, slots).unwrap();
    let mut x = Inputs::random(rng, slots.len() * DRAFT);
    d.verify(pool, layer, &vb, x.io()).unwrap();
}

fn decode(d: &D, pool: &mut PoolOf<D>, layer: usize, slots: &[Slot], rng: &mut ChaCha8Rng) -> Result<()> {
    let db = DecodeBatch::new(pool, slots)?;
    let mut x = Inputs::random(rng, slots.len());
    d.decode(pool, layer, &db, x.io())
}

/// Every allocated slot's exported state and the digest of every buffer byte.
fn everything(pool: &PoolOf<D>, slots: &[Slot]) -> (Vec<HostState>, u64) {
    (slots.iter().map(|&s| pool.export(s).unwrap()).collect(), pool.digest().unwrap())
}

macro_rules! refused {
    ($pool:expr, $slots:expr, $call:expr, $pat:pat) => {{
        let before = everything(&$pool, &$slots);
        let r = $call;
        assert!(matches!(r, Err($pat)), "{} gave {:?}", stringify!($call), r);
        assert!(everything(&$pool, &$slots) == before, "refused {} changed pool bytes", stringify!($call));
    }};
}

fn commit(d: &D, pool: &mut PoolOf<D>, layer: usize, slots: &[Slot], accepted: &[usize]) -> Result<()> {
    let cb = CommitBatch::new(pool, slots, &accepted.iter().map(|&a| Some(a)).collect::<Vec<_>>(), &[])?;
    d.commit(pool, layer, &cb)
}

#[test]
fn commit_without_any_verify_is_refused() {
    let (d, mut pool, s, _) = setup(1);
    refused!(pool, s, commit(&d, &mut pool, 0, &s[..2], &[1, 2]), Error::NoCurrentVerify { index: 0, layer: 0, .. });
}

#[test]
fn decode_after_verify_makes_it_stale() {
    let (d, mut pool, s, mut rng) = setup(2);
    verify(&d, &mut pool, 0, &s[..2], &mut rng);
    decode(&d, &mut pool, 0, &s[1..2], &mut rng).unwrap();
    // slot s[0] is still current, s[1] is not: the whole commit is refused
    refused!(pool, s, commit(&d, &mut pool, 0, &s[..2], &[0, 0]), Error::NoCurrentVerify { index: 1, layer: 0, .. });
    assert!(pool.has_current_verify(s[0], 0) && !pool.has_current_verify(s[1], 0));
    // decode of another layer does not touch layer 0's verify
    verify(&d, &mut pool, 0, &s[1..2], &mut rng);
    decode(&d, &mut pool, 1, &s[..2], &mut rng).unwrap();
    commit(&d, &mut pool, 0, &s[..2], &[0, 2]).unwrap();
}

#[test]
fn commit_of_a_layer_not_verified_is_refused() {
    let (d, mut pool, s, mut rng) = setup(3);
    verify(&d, &mut pool, 0, &s[..1], &mut rng);
    refused!(pool, s, commit(&d, &mut pool, 1, &s[..1], &[2]), Error::NoCurrentVerify { layer: 1, .. });
    commit(&d, &mut pool, 0, &s[..1], &[2]).unwrap();
}

#[test]
fn commit_consumes_the_verify() {
    let (d, mut pool, s, mut rng) = setup(4);
    verify(&d, &mut pool, 1, &s[..2], &mut rng);
    commit(&d, &mut pool, 1, &s[..2], &[1, 1]).unwrap();
    refused!(pool, s, commit(&d, &mut pool, 1, &s[..2], &[1, 1]), Error::NoCurrentVerify { .. });
    refused!(pool, s, commit(&d, &mut pool, 1, &s[1..2], &[0]), Error::NoCurrentVerify { .. });
}

#[test]
fn every_main_state_write_makes_the_verify_stale() {
    type Op = fn(&D, &mut PoolOf<D>, &[Slot], &mut ChaCha8Rng);
    let ops: [(&str, Op); 5] = [
        ("import", |_, p, s, _| {
            let st = p.export(s[1]).unwrap();
            p.import(s[0], &st).unwrap()
        }),
        ("zero", |_, p, s, _| p.zero(&s[..1]).unwrap()),
        ("copy into", |_, p, s, _| p.copy(s[1], s[0]).unwrap()),
        ("extend", |d, p, s, rng| {
            let eb = ExtendBatch::new(p, &[0, 5], &s[..1], &[true]).unwrap();
            let mut x = Inputs::random(rng, 5);
            d.extend(p, 0, &eb, x.io()).unwrap()
        }),
        ("snapshot target of an extend", |d, p, s, rng| {
            let eb = ExtendBatch::new(p, &[0, 5], &s[1..2], &[true])
                .unwrap()
                .with_snapshots(p, &[Snapshot { seq: 0, position: 2, slot: s[0] }])
                .unwrap();
            let mut x = Inputs::random(rng, 5);
            d.extend(p, 0, &eb, x.io()).unwrap()
        }),
    ];
    for (name, op) in ops {
        let (d, mut pool, s, mut rng) = setup(5);
        verify(&d, &mut pool, 0, &s[..1], &mut rng);
        op(&d, &mut pool, &s, &mut rng);
        assert!(!pool.has_current_verify(s[0], 0), "{name} left the verify current");
        refused!(pool, s, commit(&d, &mut pool, 0, &s[..1], &[0]), Error::NoCurrentVerify { .. });
    }
}

#[test]
fn verify_free_reallocate_commit_is_refused() {
    let (d, mut pool, s, mut rng) = setup(6);
    verify(&d, &mut pool, 0, &s[..1], &mut rng);
    let old = CommitBatch::new(&pool, &s[..1], &[Some(1)], &[]).unwrap();
    pool.free(&s[..1]).unwrap();
    let again = pool.alloc(1).unwrap()[0];
    assert_eq!(again.index(), s[0].index(), "LIFO free list: same index");
    assert_ne!(again, s[0], "a new generation");
    let live = [again, s[1], s[2]];
    // the batch built before the free is stale; a fresh one finds no current verify
    refused!(pool, live, d.commit(&mut pool, 0, &old), Error::StaleSlot { index: 0, .. });
    refused!(pool, live, commit(&d, &mut pool, 0, &[again], &[1]), Error::NoCurrentVerify { .. });
}

#[test]
fn batch_validated_before_free_and_reallocation_is_refused() {
    let (d, mut pool, s, mut rng) = setup(7);
    let db = DecodeBatch::new(&pool, &s[..2]).unwrap();
    let eb = ExtendBatch::new(&pool, &[0, 2, 4], &s[..2], &[true, true]).unwrap();
    let vb = VerifyBatch::chain(&pool, &s[1..2]).unwrap();
    pool.free(&s[1..2]).unwrap();
    let new_owner = pool.alloc(1).unwrap()[0];
    assert_eq!(new_owner.index(), s[1].index());
    let live = [s[0], new_owner, s[2]];
    let mut x = Inputs::random(&mut rng, 2);
    refused!(pool, live, d.decode(&mut pool, 0, &db, x.io()), Error::StaleSlot { index: 1, .. });
    let mut x = Inputs::random(&mut rng, 4);
    refused!(pool, live, d.extend(&mut pool, 0, &eb, x.io()), Error::StaleSlot { index: 1, .. });
    let mut x = Inputs::random(&mut rng, DRAFT);
    refused!(pool, live, d.verify(&mut pool, 0, &vb, x.io()), Error::StaleSlot { index: 0, .. });
    // the stale handle itself: every pool operation refuses it, the new owner is untouched
    refused!(pool, live, pool.free(&s[1..2]), Error::StaleSlot { .. });
    refused!(pool, live, pool.zero(&s[1..2]), Error::StaleSlot { .. });
    refused!(pool, live, pool.export(s[1]).map(|_| ()), Error::StaleSlot { .. });
    refused!(pool, live, DecodeBatch::new(&pool, &s[1..2]).map(|_| ()), Error::StaleSlot { .. });
    assert!(!pool.is_allocated(s[1]) && pool.is_allocated(new_owner));
    // the raw handle (what the bindings pass around) carries the generation
    assert_eq!(Slot::from_raw(new_owner.to_raw()), new_owner);
    assert_ne!(new_owner.to_raw(), s[1].to_raw());
}

#[test]
fn legal_sequences_still_commit_the_verified_step() {
    let (d, mut pool, s, mut rng) = setup(8);
    let before = pool.export(s[0]).unwrap();
    let vb = VerifyBatch::chain(&pool, &s[..1]).unwrap();
    let mut x = Inputs::random(&mut rng, DRAFT);
    d.verify(&mut pool, 0, &vb, x.io()).unwrap();
    assert_eq!(pool.export(s[0]).unwrap(), before, "verify leaves the main state");
    commit(&d, &mut pool, 0, &s[..1], &[1]).unwrap();
    // the committed state equals decoding the first two drafts from the saved state
    let got = pool.export(s[0]).unwrap();
    pool.import(s[0], &before).unwrap();
    for t in 0..2 {
        let db = DecodeBatch::new(&pool, &s[..1]).unwrap();
        let m = dims();
        let (kq, vo, h) = (m.num_k_heads * m.head_k_dim, m.num_v_heads * m.head_v_dim, m.num_v_heads);
        let mut one = Inputs {
            q: x.q[t * kq..(t + 1) * kq].to_vec(),
            k: x.k[t * kq..(t + 1) * kq].to_vec(),
            v: x.v[t * vo..(t + 1) * vo].to_vec(),
            g: x.g[t * h..(t + 1) * h].to_vec(),
            beta: x.beta[t * h..(t + 1) * h].to_vec(),
            o: vec![0.0; vo],
        };
        d.decode(&mut pool, 0, &db, one.io()).unwrap();
    }
    assert_eq!(pool.export(s[0]).unwrap().temporal, got.temporal);
    // a refused verify (bad tensor) changes nothing, not even which verify is current
    verify(&d, &mut pool, 0, &s[..1], &mut rng);
    let mut bad = Inputs::random(&mut rng, DRAFT + 1);
    refused!(pool, s, d.verify(&mut pool, 0, &vb, bad.io()), Error::ShapeMismatch { .. });
    assert!(pool.has_current_verify(s[0], 0));
    commit(&d, &mut pool, 0, &s[..1], &[2]).unwrap();
}
