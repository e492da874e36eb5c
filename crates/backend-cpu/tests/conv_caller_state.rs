//! `conv_update_caller_state` (causal-conv1d's update on a conv state the
//! caller owns, `[B, conv_dim, S]` with `S >= W-1`): the same bits as a pool's
//! conv update started from the newest W-1 columns, the state shifted by one
//! with the token appended (the older columns kept), against a by-hand f64
//! conv; refusals write nothing.

use deltanet_backend_cpu::CpuKMajor;
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-1.0f32..1.0)).collect()
}

/// A conv call over `[b, cd]` rows, weights `[cd, w]`.
fn conv_io<'a>(x: &'a [f32], weight: &'a [f32], bias: Option<&'a [f32]>, out: &'a mut [f32], b: usize, cd: usize, w: usize) -> ConvIo<'a> {
    ConvIo {
        x: TensorRef::from_slice(x, &[b, cd]).unwrap(),
        weight: TensorRef::from_slice(&weight[..cd * w], &[cd, w]).unwrap(),
        bias: bias.map(|bias| TensorRef::from_slice(bias, &[cd]).unwrap()),
        out: TensorMut::from_slice(out, &[b, cd]).unwrap(),
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[test]
fn caller_state_update_equals_the_pool_update_and_the_f64_conv() {
    let d = CpuKMajor::new();
    let mut r = ChaCha8Rng::seed_from_u64(41);
    // conv_dim 2*1*16 + 2*1500 = 3032 (two channel blocks, the second partial)
    let dims_for = |w: usize| ModelDims::new(1, 2, 16, 1500, w).unwrap();
    for w in [2usize, 3, 4, 5] {
        for s_len in [w - 1, w, w + 2] {
            for with_bias in [false, true] {
                let dims = dims_for(w);
                let (cd, b) = (dims.conv_dim(), 3usize);
                let weight = rand_vec(&mut r, cd * w);
                let bias = rand_vec(&mut r, cd);
                let x = rand_vec(&mut r, b * cd);
                let state0 = rand_vec(&mut r, b * cd * s_len);
                let bias_arg = with_bias.then_some(&bias[..]);

                let mut state = state0.clone();
                let mut out = vec![0f32; b * cd];
                d.conv_update_caller_state(conv_io(&x, &weight, bias_arg, &mut out, b, cd, w), &mut state, s_len).unwrap();

                // the pool's conv update, from the newest W-1 columns of each row
                let mut pool = d.new_pool(PoolConfig::new(1, b, dims)).unwrap();
                let slots = pool.alloc(b).unwrap();
                for (i, slot) in slots.iter().enumerate() {
                    let window: Vec<f32> =
                        (0..cd).flat_map(|c| state0[(i * cd + c) * s_len + s_len - (w - 1)..(i * cd + c + 1) * s_len].to_vec()).collect();
                    let st = HostState::from_f32(1, dims, DType::F32, DType::F32, &vec![0.0; dims.state_elems()], &window).unwrap();
                    pool.import(*slot, &st).unwrap();
                }
                let mut pool_out = vec![0f32; b * cd];
                let batch = DecodeBatch::new(&pool, &slots).unwrap();
                d.conv_update(&mut pool, 0, &batch, conv_io(&x, &weight, bias_arg, &mut pool_out, b, cd, w)).unwrap();
                assert_eq!(
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    pool_out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "W {w} S {s_len}: outputs differ from the pool's conv update"
                );

                for i in 0..b {
                    let pool_window = pool.export(slots[i]).unwrap().conv_f32();
                    for c in 0..cd {
                        let row0 = &state0[(i * cd + c) * s_len..(i * cd + c + 1) * s_len];
                        let row = &state[(i * cd + c) * s_len..(i * cd + c + 1) * s_len];
                        let xc = x[i * cd + c];
                        // shifted by one, the token appended
                        assert_eq!(&row[..s_len - 1], &row0[1..], "W {w} S {s_len}: row ({i}, {c}) not shifted");
                        assert_eq!(row[s_len - 1], xc);
                        assert_eq!(&pool_window[c * (w - 1)..(c + 1) * (w - 1)], &row[s_len - (w - 1)..], "the pool's window");
                        // the f64 conv of the newest W-1 inputs and the token
                        let mut acc = if with_bias { bias[c] as f64 } else { 0.0 };
                        for j in 0..w - 1 {
                            acc += weight[c * w + j] as f64 * row0[s_len - (w - 1) + j] as f64;
                        }
                        acc += weight[c * w + w - 1] as f64 * xc as f64;
                        let want = silu(acc);
                        let got = out[i * cd + c] as f64;
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "W {w} S {s_len} ({i}, {c}): {got} vs {want}");
                    }
                }
            }
        }
    }
}

#[test]
fn refused_caller_state_updates_write_nothing() {
    let d = CpuKMajor::new();
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let (cd, w, b) = (64usize, 4usize, 2usize);
    let weight = rand_vec(&mut r, cd * w);
    let x = rand_vec(&mut r, b * cd);
    let mut out = vec![0f32; b * cd];
    // a state shorter than W-1 columns
    let state0 = rand_vec(&mut r, b * cd * 2);
    let mut state = state0.clone();
    let e = d.conv_update_caller_state(conv_io(&x, &weight, None, &mut out, b, cd, w), &mut state, 2).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert_eq!(state, state0);
    // a state of the wrong length
    let state0 = rand_vec(&mut r, b * cd * 4 - 1);
    let mut state = state0.clone();
    assert!(matches!(
        d.conv_update_caller_state(conv_io(&x, &weight, None, &mut out, b, cd, w), &mut state, 4),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(state, state0);
    // weights of another conv_dim
    let state0 = rand_vec(&mut r, b * cd * 4);
    let mut state = state0.clone();
    assert!(matches!(
        d.conv_update_caller_state(bad_weights(&x, &weight, &mut out, b, cd, w), &mut state, 4),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(state, state0);
    assert!(out.iter().all(|&v| v == 0.0), "a refused call wrote outputs");
}

/// A call whose weights cover half the channels of `x`.
fn bad_weights<'a>(x: &'a [f32], weight: &'a [f32], out: &'a mut [f32], b: usize, cd: usize, w: usize) -> ConvIo<'a> {
    let mut io = conv_io(x, weight, None, out, b, cd, w);
    io.weight = TensorRef::from_slice(&weight[..cd / 2 * w], &[cd / 2, w]).unwrap();
    io
}
