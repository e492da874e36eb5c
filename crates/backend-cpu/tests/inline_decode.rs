//! `with_inline_decode`: a decode run on the calling thread gives the same bits
//! (outputs and states) as on the worker pool, for f32 and bf16 states, with
//! fresh random inputs and a random starting state; and so does one split over
//! a host's team of threads (`with_host_team`).

use deltanet_backend_cpu::{CpuKMajor, HostTeam};
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

fn rand_vec(r: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(lo..hi)).collect()
}

/// A pool of one layer whose `n` slots hold the recurrent states `init` (`sd`, conv states zero).
fn pool_with_states(d: &CpuKMajor, dims: ModelDims, sd: DType, init: &[f32], n: usize) -> (PoolOf<CpuKMajor>, Vec<Slot>) {
    let mut pool = d.new_pool(PoolConfig::new(1, n, dims).with_state_dtype(sd)).unwrap();
    let slots = pool.alloc(n).unwrap();
    let per = dims.state_elems();
    for (i, s) in slots.iter().enumerate() {
        let st = HostState::from_f32(1, dims, sd, DType::F32, &init[i * per..(i + 1) * per], &vec![0.0; dims.conv_elems()]).unwrap();
        pool.import(*s, &st).unwrap();
    }
    (pool, slots)
}

/// The slots' recurrent states, f32.
fn states(pool: &PoolOf<CpuKMajor>, slots: &[Slot]) -> Vec<f32> {
    slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect()
}

/// Random q, k, v, g (log of a decay in [0.5, 1)) and beta of `rows` tokens.
struct Inputs {
    rows: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
}

impl Inputs {
    fn random(r: &mut ChaCha8Rng, rows: usize, dims: ModelDims) -> Inputs {
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        Inputs {
            rows,
            q: rand_vec(r, rows * hk * k, -1.0, 1.0),
            k: rand_vec(r, rows * hk * k, -1.0, 1.0),
            v: rand_vec(r, rows * hv * v, -1.0, 1.0),
            g: rand_vec(r, rows * hv, 0.5, 1.0).into_iter().map(f32::ln).collect(),
            beta: rand_vec(r, rows * hv, 0.05, 1.0),
        }
    }

    /// The delta rule's tensors over these inputs and the output `o` (`rows * HV * V` values).
    fn io<'a>(&'a self, o: &'a mut [f32], dims: ModelDims) -> DeltaIo<'a> {
        let (t, hk, hv, k, v) = (self.rows, dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        DeltaIo {
            q: TensorRef::from_slice(&self.q, &[t, hk, k]).unwrap(),
            k: TensorRef::from_slice(&self.k, &[t, hk, k]).unwrap(),
            v: TensorRef::from_slice(&self.v, &[t, hv, v]).unwrap(),
            g: TensorRef::from_slice(&self.g, &[t, hv]).unwrap(),
            beta: TensorRef::from_slice(&self.beta, &[t, hv]).unwrap(),
            o: TensorMut::from_slice(o, &[t, hv, v]).unwrap(),
            params: DeltaParams::new(&dims),
        }
    }
}

/// Three decode steps of `b` requests from `init`; returns (outputs, final states).
fn decode(d: &CpuKMajor, dims: ModelDims, sd: DType, b: usize, init: &[f32], seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let (mut pool, slots) = pool_with_states(d, dims, sd, init, b);
    let mut outs = Vec::new();
    for _ in 0..3 {
        let inputs = Inputs::random(&mut r, b, dims);
        let mut o = vec![0f32; b * dims.num_v_heads * dims.head_v_dim];
        let batch = DecodeBatch::new(&pool, &slots).unwrap();
        d.decode(&mut pool, 0, &batch, inputs.io(&mut o, dims)).unwrap();
        outs.extend(o);
    }
    (outs, states(&pool, &slots))
}

#[test]
fn a_decode_on_the_calling_thread_gives_the_pools_bits() {
    let dims = ModelDims::new(2, 4, 32, 24, 4).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(5);
    for sd in [DType::F32, DType::BF16] {
        let b = 3;
        let init = rand_vec(&mut r, b * dims.state_elems(), -1.0, 1.0);
        let pooled = decode(&CpuKMajor::with_threads(2).unwrap(), dims, sd, b, &init, 9);
        let inline = decode(&CpuKMajor::with_threads(2).unwrap().with_inline_decode(usize::MAX), dims, sd, b, &init, 9);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&pooled.0), bits(&inline.0), "{sd:?}: outputs");
        assert_eq!(bits(&pooled.1), bits(&inline.1), "{sd:?}: states");
        assert!(pooled.0.iter().all(|x| x.is_finite()) && pooled.0.iter().any(|&x| x != 0.0));
        assert_ne!(bits(&pooled.1), bits(&init), "{sd:?}: the states moved");
    }
}

/// Three conv updates of `b` requests through a pool, then three on a caller
/// state, from the same random start; returns (outputs, pool conv states,
/// caller state).
fn conv_updates(d: &CpuKMajor, dims: ModelDims, b: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let (cd, w) = (dims.conv_dim(), dims.conv_width);
    let weight = rand_vec(&mut r, cd * w, -1.0, 1.0);
    let mut pool = d.new_pool(PoolConfig::new(1, b, dims)).unwrap();
    let slots = pool.alloc(b).unwrap();
    for s in &slots {
        let conv = rand_vec(&mut r, dims.conv_elems(), -1.0, 1.0);
        pool.import(*s, &HostState::from_f32(1, dims, DType::F32, DType::F32, &vec![0.0; dims.state_elems()], &conv).unwrap()).unwrap();
    }
    let mut caller_state = rand_vec(&mut r, b * cd * (w - 1), -1.0, 1.0);
    let mut outs = Vec::new();
    for step in 0..6 {
        let x = rand_vec(&mut r, b * cd, -1.0, 1.0);
        let mut out = vec![0f32; b * cd];
        let io = ConvIo {
            x: TensorRef::from_slice(&x, &[b, cd]).unwrap(),
            weight: TensorRef::from_slice(&weight, &[cd, w]).unwrap(),
            bias: None,
            out: TensorMut::from_slice(&mut out, &[b, cd]).unwrap(),
        };
        if step < 3 {
            let batch = DecodeBatch::new(&pool, &slots).unwrap();
            d.conv_update(&mut pool, 0, &batch, io).unwrap();
        } else {
            d.conv_update_caller_state(io, &mut caller_state, w - 1).unwrap();
        }
        outs.extend(out);
    }
    let states = slots.iter().flat_map(|s| pool.export(*s).unwrap().conv_f32()).collect();
    (outs, states, caller_state)
}

#[test]
fn a_conv_update_on_the_calling_thread_gives_the_pools_bits() {
    // conv_dim 2*16 + 2*3000 = 6032; 3 requests make 18096 (token, channel) pairs, more than a
    // call the pool runs on the calling thread on its own, so `pooled` spreads the blocks
    let dims = ModelDims::new(1, 2, 16, 3000, 4).unwrap();
    let pooled = conv_updates(&CpuKMajor::with_threads(2).unwrap(), dims, 3, 17);
    let inline = conv_updates(&CpuKMajor::with_threads(2).unwrap().with_inline_decode(usize::MAX), dims, 3, 17);
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&pooled.0), bits(&inline.0), "outputs");
    assert_eq!(bits(&pooled.1), bits(&inline.1), "pool conv states");
    assert_eq!(bits(&pooled.2), bits(&inline.2), "caller states");
    assert!(pooled.0.iter().all(|x| x.is_finite()) && pooled.0.iter().any(|&x| x != 0.0));
}

/// A host team of `n` scoped threads (the caller as thread 0) that records
/// which threads ran a share of a region with work in it.
struct ScopedTeam {
    n: usize,
    regions: Mutex<usize>,
    threads_used: Mutex<HashSet<std::thread::ThreadId>>,
}

impl ScopedTeam {
    fn new(n: usize) -> Arc<ScopedTeam> {
        Arc::new(ScopedTeam { n, regions: Mutex::new(0), threads_used: Mutex::new(HashSet::new()) })
    }
}

impl HostTeam for ScopedTeam {
    fn run(&self, body: &(dyn Fn(usize, usize) + Sync)) {
        *self.regions.lock().unwrap() += 1;
        let share = |i: usize| {
            self.threads_used.lock().unwrap().insert(std::thread::current().id());
            body(i, self.n)
        };
        std::thread::scope(|s| {
            for i in 1..self.n {
                s.spawn(move || share(i));
            }
            share(0);
        });
    }
}

#[test]
fn a_decode_and_a_conv_update_split_over_a_host_team_give_the_pools_bits() {
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let dims = ModelDims::new(2, 4, 32, 24, 4).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(6);
    for sd in [DType::F32, DType::BF16] {
        let b = 3;
        let init = rand_vec(&mut r, b * dims.state_elems(), -1.0, 1.0);
        let pooled = decode(&CpuKMajor::with_threads(2).unwrap(), dims, sd, b, &init, 11);
        let t = ScopedTeam::new(3);
        let d = CpuKMajor::with_threads(2).unwrap().with_inline_decode(usize::MAX).with_host_team(t.clone());
        let teamed = decode(&d, dims, sd, b, &init, 11);
        assert_eq!(bits(&pooled.0), bits(&teamed.0), "{sd:?}: outputs");
        assert_eq!(bits(&pooled.1), bits(&teamed.1), "{sd:?}: states");
        assert!(pooled.0.iter().all(|x| x.is_finite()) && pooled.0.iter().any(|&x| x != 0.0));
        assert_eq!(*t.regions.lock().unwrap(), 3, "{sd:?}: one region per decode step");
        // the caller, and two threads spawned afresh per region
        assert_eq!(t.threads_used.lock().unwrap().len(), 1 + 2 * 3, "{sd:?}: every thread of the team ran a share");
    }
    let dims = ModelDims::new(1, 2, 16, 3000, 4).unwrap();
    let pooled = conv_updates(&CpuKMajor::with_threads(2).unwrap(), dims, 3, 19);
    let t = ScopedTeam::new(3);
    let teamed = conv_updates(&CpuKMajor::with_threads(2).unwrap().with_inline_decode(usize::MAX).with_host_team(t.clone()), dims, 3, 19);
    assert_eq!(bits(&pooled.0), bits(&teamed.0), "conv outputs");
    assert_eq!(bits(&pooled.1), bits(&teamed.1), "pool conv states");
    assert_eq!(bits(&pooled.2), bits(&teamed.2), "caller states");
    assert_eq!(*t.regions.lock().unwrap(), 6, "one region per conv update");
    // 6032 channels are 12 quarter blocks on a team: every thread of every region had some
    assert_eq!(t.threads_used.lock().unwrap().len(), 1 + 2 * 6);
}

/// A prefill extend of sequences of 70, 5 and 1 tokens (the last continuing its
/// state: a decode inside the extend) from random states; returns (outputs, states).
fn extend(d: &CpuKMajor, dims: ModelDims, init: &[f32], seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let (mut pool, slots) = pool_with_states(d, dims, DType::F32, init, 3);
    let cu = [0, 70, 75, 76];
    let t = cu[3];
    let inputs = Inputs::random(&mut r, t, dims);
    let mut o = vec![0f32; t * dims.num_v_heads * dims.head_v_dim];
    let batch = ExtendBatch::new(&pool, &cu, &slots, &[true, false, true]).unwrap();
    d.extend(&mut pool, 0, &batch, inputs.io(&mut o, dims)).unwrap();
    (o, states(&pool, &slots))
}

#[test]
fn an_extend_on_a_host_team_gives_the_pools_bits() {
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let dims = ModelDims::new(2, 4, 32, 24, 4).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(8);
    let init = rand_vec(&mut r, 3 * dims.state_elems(), -1.0, 1.0);
    let pooled = extend(&CpuKMajor::with_threads(2).unwrap(), dims, &init, 21);
    let t = ScopedTeam::new(3);
    let teamed = extend(&CpuKMajor::with_threads(2).unwrap().with_host_team(t.clone()), dims, &init, 21);
    assert_eq!(bits(&pooled.0), bits(&teamed.0), "outputs");
    assert_eq!(bits(&pooled.1), bits(&teamed.1), "states");
    assert!(pooled.0.iter().all(|x| x.is_finite()) && pooled.0.iter().any(|&x| x != 0.0));
    assert_ne!(bits(&pooled.1), bits(&init), "the states moved");
    assert_eq!(*t.regions.lock().unwrap(), 1, "the extend ran on the team");
}
