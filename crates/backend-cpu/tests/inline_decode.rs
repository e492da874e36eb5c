//! `with_inline_decode`: a decode run on the calling thread gives the same bits
//! (outputs and states) as on the worker pool, for f32 and bf16 states, with
//! fresh random inputs and a random starting state.

use deltanet_backend_cpu::CpuKMajor;
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(r: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(lo..hi)).collect()
}

/// Three decode steps of `b` requests from `init`; returns (outputs, final states).
fn decode(d: &CpuKMajor, dims: ModelDims, sd: DType, b: usize, init: &[f32], seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut pool = d.new_pool(PoolConfig::new(1, b, dims).with_state_dtype(sd)).unwrap();
    let slots = pool.alloc(b).unwrap();
    let per = dims.state_elems();
    for (i, s) in slots.iter().enumerate() {
        let st = HostState::from_f32(1, dims, sd, DType::F32, &init[i * per..(i + 1) * per], &vec![0.0; dims.conv_elems()]).unwrap();
        pool.import(*s, &st).unwrap();
    }
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    let mut outs = Vec::new();
    for _ in 0..3 {
        let q = rand_vec(&mut r, b * hk * k, -1.0, 1.0);
        let kk = rand_vec(&mut r, b * hk * k, -1.0, 1.0);
        let vv = rand_vec(&mut r, b * hv * v, -1.0, 1.0);
        let g: Vec<f32> = rand_vec(&mut r, b * hv, 0.5, 1.0).into_iter().map(f32::ln).collect();
        let beta = rand_vec(&mut r, b * hv, 0.05, 1.0);
        let mut o = vec![0f32; b * hv * v];
        let batch = DecodeBatch::new(&pool, &slots).unwrap();
        let io = DeltaIo {
            q: TensorRef::from_slice(&q, &[b, hk, k]).unwrap(),
            k: TensorRef::from_slice(&kk, &[b, hk, k]).unwrap(),
            v: TensorRef::from_slice(&vv, &[b, hv, v]).unwrap(),
            g: TensorRef::from_slice(&g, &[b, hv]).unwrap(),
            beta: TensorRef::from_slice(&beta, &[b, hv]).unwrap(),
            o: TensorMut::from_slice(&mut o, &[b, hv, v]).unwrap(),
            params: DeltaParams::new(&dims),
        };
        d.decode(&mut pool, 0, &batch, io).unwrap();
        outs.extend(o);
    }
    let states = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect();
    (outs, states)
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
