//! `decode_caller_state` (a decode step on an f32 recurrent state the caller
//! owns, `[N, HV, K, V]` in the dispatcher's layout): the same bits as a pool
//! decode from the same states, for both layouts, GVA, with and without the
//! q/k L2 norm, on the calling thread and on the worker pool, with fresh
//! random inputs and states; refusals return the typed error and write nothing.

use deltanet_backend_cpu::CpuDispatcher;
use deltanet_core::*;
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(r: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(lo..hi)).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// HK = 2, HV = 4 (two value heads per key head); K != V, so a layout mix-up cannot pass.
fn gva_dims() -> ModelDims {
    ModelDims::new(2, 4, 32, 24, 4).unwrap()
}

/// The inputs of one decode step of `b` sequences (g = ln of (0.5, 1), so a real decay).
struct Step {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
}

impl Step {
    fn random(r: &mut ChaCha8Rng, dims: ModelDims, b: usize) -> Self {
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        Step {
            q: rand_vec(r, b * hk * k, -1.0, 1.0),
            k: rand_vec(r, b * hk * k, -1.0, 1.0),
            v: rand_vec(r, b * hv * v, -1.0, 1.0),
            g: rand_vec(r, b * hv, 0.5, 1.0).into_iter().map(f32::ln).collect(),
            beta: rand_vec(r, b * hv, 0.05, 1.0),
        }
    }

    /// The call's tensors, `[b, ...]`, writing into `o`.
    fn io<'a>(&'a self, dims: ModelDims, b: usize, l2norm: bool, o: &'a mut [f32]) -> DeltaIo<'a> {
        let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        DeltaIo {
            q: TensorRef::from_slice(&self.q, &[b, hk, k]).unwrap(),
            k: TensorRef::from_slice(&self.k, &[b, hk, k]).unwrap(),
            v: TensorRef::from_slice(&self.v, &[b, hv, v]).unwrap(),
            g: TensorRef::from_slice(&self.g, &[b, hv]).unwrap(),
            beta: TensorRef::from_slice(&self.beta, &[b, hv]).unwrap(),
            o: TensorMut::from_slice(o, &[b, hv, v]).unwrap(),
            params: DeltaParams { use_qk_l2norm: l2norm, ..DeltaParams::new(&dims) },
        }
    }
}

/// Two decode steps of `b` sequences from random states, through an f32 pool and on a
/// caller state in `L`'s layout; asserts both give the same bits (outputs and states).
fn caller_state_matches_pool<L: StateLayout>(d: &CpuDispatcher<L>, b: usize, l2norm: bool, seed: u64) {
    let dims = gva_dims();
    let (hv, kd, vd, per) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim, dims.state_elems());
    let what = format!("{:?} B={b} l2norm={l2norm} threads={}", L::KIND, d.threads());
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let canonical = rand_vec(&mut r, b * per, -1.0, 1.0);

    let mut pool = d.new_pool(PoolConfig::new(1, b, dims)).unwrap();
    let slots = pool.alloc(b).unwrap();
    for (i, s) in slots.iter().enumerate() {
        let st = HostState::from_f32(1, dims, DType::F32, DType::F32, &canonical[i * per..(i + 1) * per], &vec![0.0; dims.conv_elems()]);
        pool.import(*s, &st.unwrap()).unwrap();
    }
    // the same states in the dispatcher's layout, where the caller keeps them
    let mut state = vec![0f32; b * per];
    convert_state(LayoutKind::KMajor, L::KIND, b * hv, kd, vd, &canonical, &mut state).unwrap();
    let start = state.clone();

    for step in 0..2 {
        let inputs = Step::random(&mut r, dims, b);
        let (mut o_pool, mut o_caller) = (vec![0f32; b * hv * vd], vec![0f32; b * hv * vd]);
        let batch = DecodeBatch::new(&pool, &slots).unwrap();
        d.decode(&mut pool, 0, &batch, inputs.io(dims, b, l2norm, &mut o_pool)).unwrap();
        d.decode_caller_state(&dims, inputs.io(dims, b, l2norm, &mut o_caller), &mut state).unwrap();
        assert_eq!(bits(&o_caller), bits(&o_pool), "{what} step {step}: outputs");
        assert!(o_pool.iter().all(|x| x.is_finite()) && o_pool.iter().any(|&x| x != 0.0), "{what}: degenerate outputs");

        let pool_canonical: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect();
        let mut pool_state = vec![0f32; b * per];
        convert_state(LayoutKind::KMajor, L::KIND, b * hv, kd, vd, &pool_canonical, &mut pool_state).unwrap();
        assert_eq!(bits(&state), bits(&pool_state), "{what} step {step}: states");
    }
    assert_ne!(bits(&state), bits(&start), "{what}: the state moved");
}

/// Every case on one dispatcher of layout `L`, on the worker pool and on the calling thread.
fn every_case<L: StateLayout>(seed: u64) {
    let pooled = CpuDispatcher::<L>::with_threads(2).unwrap();
    let inline = CpuDispatcher::<L>::with_threads(2).unwrap().with_inline_decode(usize::MAX);
    for (i, d) in [pooled, inline].iter().enumerate() {
        for b in [1usize, 3] {
            for l2norm in [false, true] {
                caller_state_matches_pool(d, b, l2norm, seed + 10 * i as u64 + b as u64 + l2norm as u64);
            }
        }
    }
}

#[test]
fn k_major_caller_state_decode_gives_the_pools_bits() {
    every_case::<KMajor>(100);
}

#[test]
fn v_major_caller_state_decode_gives_the_pools_bits() {
    every_case::<VMajor>(200);
}

/// A call `break_it` spoils is refused with `expected`, leaving the state and the output as they were.
fn refused<L: StateLayout>(expected: fn(&Error) -> bool, break_it: impl FnOnce(&mut DeltaIo<'_>, &mut Vec<f32>, &mut ModelDims)) {
    let (mut dims, b) = (gva_dims(), 3);
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let inputs = Step::random(&mut r, dims, b);
    let mut state = rand_vec(&mut r, b * dims.state_elems(), -1.0, 1.0);
    let mut o = rand_vec(&mut r, b * dims.num_v_heads * dims.head_v_dim, -1.0, 1.0);
    let (state0, o0) = (state.clone(), o.clone());
    let d = CpuDispatcher::<L>::new();
    let err = {
        let mut io = inputs.io(dims, b, true, &mut o);
        break_it(&mut io, &mut state, &mut dims);
        d.decode_caller_state(&dims, io, &mut state).unwrap_err()
    };
    assert!(expected(&err), "{:?}: unexpected error {err:?}", L::KIND);
    // a wrong-length state was cut or grown by `break_it`: compare what it kept
    let kept = state.len().min(state0.len());
    assert_eq!(bits(&state[..kept]), bits(&state0[..kept]), "{:?}: a refused call wrote the state ({err})", L::KIND);
    assert_eq!(bits(&o), bits(&o0), "{:?}: a refused call wrote the output ({err})", L::KIND);
}

fn refusals<L: StateLayout>() {
    let shape = |e: &Error| matches!(e, Error::ShapeMismatch { .. });
    // the state one sequence short, one head long, one value short
    refused::<L>(shape, |_, st, dims| st.truncate(st.len() - dims.state_elems()));
    refused::<L>(shape, |_, st, dims| st.resize(st.len() + dims.head_k_dim * dims.head_v_dim, 0.5));
    refused::<L>(shape, |_, st, _| {
        st.pop();
    });
    // q, k, v, g, beta, o of the wrong shapes: rows, heads, head dims
    static OTHER: [f32; 4096] = [0.25; 4096];
    let other = &OTHER;
    refused::<L>(shape, |io, _, _| io.q = TensorRef::from_slice(&other[..2 * 2 * 32], &[2, 2, 32]).unwrap());
    refused::<L>(shape, |io, _, _| io.k = TensorRef::from_slice(&other[..3 * 2 * 16], &[3, 2, 16]).unwrap());
    refused::<L>(shape, |io, _, _| io.v = TensorRef::from_slice(&other[..3 * 2 * 24], &[3, 2, 24]).unwrap());
    refused::<L>(shape, |io, _, _| io.g = TensorRef::from_slice(&other[..3 * 3], &[3, 3]).unwrap());
    refused::<L>(shape, |io, _, _| io.beta = TensorRef::from_slice(&other[..4 * 4], &[4, 4]).unwrap());
    refused::<L>(shape, |_, _, dims| *dims = ModelDims::new(2, 4, 32, 32, 4).unwrap());
    // g must be f32
    static G16: [bf16; 12] = [bf16::from_f32_const(-0.1); 12];
    refused::<L>(|e| matches!(e, Error::DTypeMismatch { .. }), |io, _, _| io.g = TensorRef::from_slice(&G16, &[3, 4]).unwrap());
    // an output that addresses some elements twice
    refused::<L>(
        |e| matches!(e, Error::BadStrides { .. }),
        |io, _, _| {
            let meta = TensorMeta::strided(Device::Host, DType::F32, &[3, 4, 24], &[0, 24, 1]).unwrap();
            // SAFETY: `io.o`'s memory holds 3*4*24 f32; the view spans its first 4*24.
            io.o = unsafe { TensorMut::from_raw(io.o.addr(), meta) };
        },
    );
    // no sequences; dims no backend takes
    refused::<L>(|e| matches!(e, Error::EmptyBatch { .. }), |io, _, _| io.q = TensorRef::from_slice(&other[..0], &[0, 2, 32]).unwrap());
    refused::<L>(|e| matches!(e, Error::InvalidConfig(_)), |_, _, dims| dims.num_k_heads = 3);
}

#[test]
fn refused_k_major_calls_write_nothing() {
    refusals::<KMajor>();
}

#[test]
fn refused_v_major_calls_write_nothing() {
    refusals::<VMajor>();
}
