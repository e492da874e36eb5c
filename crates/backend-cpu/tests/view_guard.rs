//! Issue 10, property test: random shapes, offsets and strides (zero, huge,
//! overlapping, wrapping) for the output and an input of a CPU decode and of
//! the gate, over a buffer with guard regions on both sides. Every call is
//! either a typed error that changed nothing (buffer, pool) or it wrote only
//! elements its output view addresses; the guards never change.

use deltanet_backend_cpu::CpuKMajor;
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;

const GUARD: usize = 256;
const SENTINEL: f32 = 1234.5;
const CASES: usize = 3000;

fn dims() -> ModelDims {
    ModelDims::new(1, 2, 4, 3, 2).unwrap()
}

/// A stride from the classes that broke views before: 0, small, dense, overlapping, huge, wrapping.
fn stride(r: &mut ChaCha8Rng, dense: usize) -> usize {
    match r.gen_range(0..9) {
        0 => 0,
        1 => 1,
        2 => dense,
        3 => dense.saturating_sub(1).max(1),
        4 => r.gen_range(0..40),
        5 => usize::MAX - r.gen_range(0..200),
        6 => 1usize << r.gen_range(40..64),
        7 => (usize::MAX / 2).wrapping_add(r.gen_range(0..4)),
        _ => dense * r.gen_range(1..4),
    }
}

fn dim(r: &mut ChaCha8Rng, right: usize) -> usize {
    match r.gen_range(0..6) {
        0 => r.gen_range(0..6),
        1 => usize::MAX / r.gen_range(1..4),
        _ => right,
    }
}

/// Every element offset (from the view's start) that the view addresses; None when too many to list.
fn addressed(shape: &[usize], strides: &[usize]) -> Option<HashSet<usize>> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if n > 1 << 16 {
        return None;
    }
    let mut out = HashSet::new();
    for lin in 0..n {
        let (mut rest, mut off) = (lin, 0usize);
        for d in (0..shape.len()).rev() {
            off += (rest % shape[d]) * strides[d];
            rest /= shape[d];
        }
        out.insert(off);
    }
    Some(out)
}

/// A random output view `[a, b, c]`-ish over `buf[GUARD..GUARD + len]`, or the typed error making it.
fn view_meta(r: &mut ChaCha8Rng, want: &[usize]) -> (Vec<usize>, Vec<usize>, Result<TensorMeta>) {
    let shape: Vec<usize> = if r.gen_bool(0.5) { want.to_vec() } else { want.iter().map(|&w| dim(r, w)).collect() };
    let mut dense = 1;
    let mut strides = vec![0; want.len()];
    for i in (0..want.len()).rev() {
        strides[i] = if i + 1 == want.len() && r.gen_bool(0.7) { 1 } else { stride(r, dense) };
        dense *= want[i];
    }
    let m = TensorMeta::strided(Device::Host, DType::F32, &shape, &strides);
    (shape, strides, m)
}

fn typed(e: &Error) -> bool {
    matches!(e, Error::BadStrides { .. } | Error::ShapeMismatch { .. } | Error::LengthMismatch { .. })
}

/// Checks the buffer after a call: guards intact; on error nothing changed;
/// on success only addressed elements changed.
fn check(buf: &[f32], before: &[f32], offset: usize, addr: Option<&HashSet<usize>>, ok: bool, case: &str) {
    let len = buf.len() - 2 * GUARD;
    assert!(buf[..GUARD].iter().chain(&buf[GUARD + len..]).all(|&x| x == SENTINEL), "{case}: guard region written");
    for (i, (&a, &b)) in buf[GUARD..GUARD + len].iter().zip(&before[GUARD..GUARD + len]).enumerate() {
        if a.to_bits() != b.to_bits() {
            assert!(ok, "{case}: refused call wrote element {i}");
            let rel = i.checked_sub(offset).expect("written before the view start");
            if let Some(set) = addr {
                assert!(set.contains(&rel), "{case}: wrote element {rel} of the view, which it does not address");
            }
        }
    }
}

#[test]
fn decode_writes_only_inside_its_output_view() {
    let d = CpuKMajor::new();
    let m = dims();
    let mut pool = d.new_pool(PoolConfig::new(1, 3, m)).unwrap();
    let slots = pool.alloc(3).unwrap();
    pool.zero(&slots).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(0x6a1d);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..CASES {
        let n = r.gen_range(1..=3);
        let batch = DecodeBatch::new(&pool, &slots[..n]).unwrap();
        let want_o = [n, m.num_v_heads, m.head_v_dim];
        let len = r.gen_range(0..80);
        let mut buf = vec![SENTINEL; GUARD + len + GUARD];
        // fresh random contents inside the view's buffer (never zeros)
        buf[GUARD..GUARD + len].iter_mut().for_each(|x| *x = r.gen_range(-1.0..1.0));
        let before = buf.clone();
        let pool_before = pool.digest().unwrap();
        let (shape, strides, meta) = view_meta(&mut r, &want_o);
        let name = format!("case {case}: o shape {shape:?} strides {strides:?} len {len}");
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                assert!(typed(&e), "{name}: {e:?}");
                refused += 1;
                continue;
            }
        };
        let offset = r.gen_range(0..=len);
        let o = match TensorMut::strided(&mut buf[GUARD..GUARD + len], offset, meta) {
            Ok(o) => o,
            Err(e) => {
                assert!(typed(&e), "{name}: {e:?}");
                refused += 1;
                continue;
            }
        };
        // q with its own random strides over a separate buffer (inputs may overlap freely)
        let qbuf: Vec<f32> = (0..64).map(|_| r.gen_range(-1.0..1.0)).collect();
        let (qs, qst, qm) = view_meta(&mut r, &[n, m.num_k_heads, m.head_k_dim]);
        let q = match qm.and_then(|qm| TensorRef::strided(&qbuf, 0, qm)) {
            Ok(q) if r.gen_bool(0.3) => q,
            _ => TensorRef::from_slice(&qbuf[..n * m.head_k_dim], &[n, 1, m.head_k_dim]).unwrap(),
        };
        let kbuf: Vec<f32> = (0..n * m.head_k_dim).map(|_| r.gen_range(-1.0..1.0)).collect();
        let vbuf: Vec<f32> = (0..n * m.num_v_heads * m.head_v_dim).map(|_| r.gen_range(-1.0..1.0)).collect();
        let gbuf: Vec<f32> = (0..n * m.num_v_heads).map(|_| r.gen_range(-1.0..-0.01)).collect();
        let bbuf: Vec<f32> = (0..n * m.num_v_heads).map(|_| r.gen_range(0.1..0.9)).collect();
        let io = DeltaIo {
            q,
            k: TensorRef::from_slice(&kbuf, &[n, 1, m.head_k_dim]).unwrap(),
            v: TensorRef::from_slice(&vbuf, &[n, m.num_v_heads, m.head_v_dim]).unwrap(),
            g: TensorRef::from_slice(&gbuf, &[n, m.num_v_heads]).unwrap(),
            beta: TensorRef::from_slice(&bbuf, &[n, m.num_v_heads]).unwrap(),
            o,
            params: DeltaParams::new(&m),
        };
        let res = d.decode(&mut pool, 0, &batch, io);
        let name = format!("{name}; q candidate shape {qs:?} strides {qst:?}: {res:?}");
        match &res {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(typed(e), "{name}");
                assert_eq!(pool.digest().unwrap(), pool_before, "{name}: refused decode changed the pool");
                refused += 1;
            }
        }
        check(&buf, &before, offset, addressed(&shape, &strides).as_ref(), res.is_ok(), &name);
    }
    // the generator reaches both outcomes often
    assert!(accepted > CASES / 20 && refused > CASES / 20, "accepted {accepted}, refused {refused}");
}

#[test]
fn gate_writes_only_inside_its_output_views() {
    let d = CpuKMajor::new();
    let m = dims();
    let hv = m.num_v_heads;
    let mut r = ChaCha8Rng::seed_from_u64(0x9a7e);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..CASES {
        let t = r.gen_range(1..=4);
        let len = r.gen_range(0..24);
        let mut buf = vec![SENTINEL; GUARD + len + GUARD];
        buf[GUARD..GUARD + len].iter_mut().for_each(|x| *x = r.gen_range(-1.0..1.0));
        let before = buf.clone();
        let (shape, strides, meta) = view_meta(&mut r, &[t, hv]);
        let name = format!("case {case}: g shape {shape:?} strides {strides:?} len {len}");
        let Ok(meta) = meta else {
            refused += 1;
            continue;
        };
        let offset = r.gen_range(0..=len);
        let Ok(g) = TensorMut::strided(&mut buf[GUARD..GUARD + len], offset, meta) else {
            refused += 1;
            continue;
        };
        let a: Vec<f32> = (0..t * hv).map(|_| r.gen_range(-2.0..2.0)).collect();
        let b: Vec<f32> = (0..t * hv).map(|_| r.gen_range(-2.0..2.0)).collect();
        let al: Vec<f32> = (0..hv).map(|_| r.gen_range(-1.0..0.5)).collect();
        let db: Vec<f32> = (0..hv).map(|_| r.gen_range(-1.0..1.0)).collect();
        let mut beta = vec![0f32; t * hv];
        let io = GateIo {
            a: TensorRef::from_slice(&a, &[t, hv]).unwrap(),
            b: TensorRef::from_slice(&b, &[t, hv]).unwrap(),
            a_log: TensorRef::from_slice(&al, &[hv]).unwrap(),
            dt_bias: TensorRef::from_slice(&db, &[hv]).unwrap(),
            g,
            beta: TensorMut::from_slice(&mut beta, &[t, hv]).unwrap(),
        };
        let res = d.gate(&m, io);
        match &res {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(typed(e), "{name}: {e:?}");
                refused += 1;
            }
        }
        check(&buf, &before, offset, addressed(&shape, &strides).as_ref(), res.is_ok(), &name);
    }
    assert!(accepted > CASES / 20 && refused > CASES / 20, "accepted {accepted}, refused {refused}");
}

/// Item 2's regression: outputs whose strides make two indices share an element are refused, untouched.
#[test]
fn overlapping_output_views_are_refused() {
    let d = CpuKMajor::new();
    let m = dims();
    let (hv, vd) = (m.num_v_heads, m.head_v_dim);
    let mut pool = d.new_pool(PoolConfig::new(1, 2, m)).unwrap();
    let slots = pool.alloc(2).unwrap();
    let batch = DecodeBatch::new(&pool, &slots).unwrap();
    let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    let (g, beta) = ([-0.1f32; 4], [0.5f32; 4]);
    for strides in [[0, vd, 1], [vd, vd, 1], [hv * vd, 0, 1], [hv * vd, vd, 0], [1, vd, 1]] {
        let mut o = vec![SENTINEL; 64];
        let before = pool.digest().unwrap();
        let meta = TensorMeta::strided(Device::Host, DType::F32, &[2, hv, vd], &strides).unwrap();
        let io = DeltaIo {
            q: TensorRef::from_slice(&x[..8], &[2, 1, 4]).unwrap(),
            k: TensorRef::from_slice(&x[8..16], &[2, 1, 4]).unwrap(),
            v: TensorRef::from_slice(&x[16..28], &[2, hv, vd]).unwrap(),
            g: TensorRef::from_slice(&g, &[2, hv]).unwrap(),
            beta: TensorRef::from_slice(&beta, &[2, hv]).unwrap(),
            o: TensorMut::strided(&mut o, 0, meta).unwrap(),
            params: DeltaParams::new(&m),
        };
        let r = d.decode(&mut pool, 0, &batch, io);
        assert!(matches!(r, Err(Error::BadStrides { ref name, .. }) if name == "o"), "{strides:?}: {r:?}");
        assert!(o.iter().all(|&v| v == SENTINEL), "{strides:?}: refused decode wrote o");
        assert_eq!(pool.digest().unwrap(), before, "{strides:?}: refused decode changed the pool");
    }
}
