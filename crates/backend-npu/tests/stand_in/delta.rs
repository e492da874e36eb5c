//! The delta rule: chunk operator calls for extend (split at snapshots),
//! the recurrent operator in place for decode and on the scratch for
//! verify, f32 state on Ascend 950.

use crate::common::*;
use deltanet_backend_npu::api::{AclApi, AclDType, OpCall};
use deltanet_backend_npu::testing::{Event, Recorded};
use deltanet_core::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn bad_input_issues_nothing() {
    let (rec, d) = setup(A2);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut pool = d.new_pool(PoolConfig::new(1, 4, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(1).unwrap();
    let batch = ExtendBatch::new(&pool, &[0, 4], &s, &[true]).unwrap();
    let mut t = delta_t(&d, &mut rng, 4, DType::BF16);
    t.q = rand_t(&d, &mut rng, DType::F32, &[4, 2, 32]);
    rec.clear();
    let digest = pool.digest().unwrap();
    assert!(matches!(d.extend(&mut pool, 0, &batch, t.io()), Err(Error::DTypeMismatch { .. })));
    assert!(matches!(d.extend(&mut pool, 1, &batch, delta_t(&d, &mut rng, 4, DType::BF16).io()), Err(Error::LayerOutOfRange { .. })));
    assert!(rec.calls().is_empty());
    assert!(rec.events().iter().all(|e| matches!(e, Event::Sync)), "no copy or zero on bad input");
    assert_eq!(pool.digest().unwrap(), digest);
}

#[test]
fn extend_marshals_chunk_operator_calls_split_at_snapshots() {
    let (rec, d) = setup(A2);
    let m = dims();
    let (hk, hv, k, v) = (m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut pool = d.new_pool(PoolConfig::new(2, 8, m).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(6).unwrap();
    let cu = [0, 5, 12, 82, 85];
    let batch = ExtendBatch::new(&pool, &cu, &s[..4], &[false, true, true, false])
        .unwrap()
        .with_snapshots(&pool, &[Snapshot { seq: 2, position: 64, slot: s[4] }, Snapshot { seq: 2, position: 70, slot: s[5] }])
        .unwrap();
    let t = 85;
    let mut io = delta_t(&d, &mut rng, t, DType::F32);
    let layer = 1;
    let temporal = desc_addr(&pool, BufferKind::Temporal, layer);
    let sb = m.state_elems() * 2;
    let slot_addr = |sl: Slot| temporal + (sl.index() * sb) as u64;
    rec.clear();
    d.extend(&mut pool, layer, &batch, io.io()).unwrap();
    let calls = rec.calls();
    let events = rec.events();

    // q and k: L2 norm as one RMS norm each (epsilon 1e-6/K, gamma K^-0.5 in bf16, f32 inside).
    let names: Vec<&str> = calls.iter().map(|c| c.op).collect();
    assert_eq!(&names[..2], &["aclnnRmsNorm", "aclnnRmsNorm"]);
    assert_eq!(expect_t(&calls[0], "x", AclDType::BF16, &[t, hk, k]).addr, io.q.addr());
    assert_eq!(expect_t(&calls[1], "x", AclDType::BF16, &[t, hk, k]).addr, io.k.addr());
    for c in &calls[..2] {
        assert!(matches!(c.call, OpCall::RmsNorm { epsilon, .. } if epsilon == L2NORM_EPS as f64 / k as f64), "{:?}", c.call);
        let gamma = expect_t(c, "gamma", AclDType::BF16, &[k]);
        let mut bytes = vec![0u8; 2 * k];
        rec.memcpy_d2h(&mut bytes, gamma.addr).unwrap();
        let want = DType::BF16.round((k as f32).powf(-0.5));
        assert!(DType::BF16.decode_vec(&bytes).iter().all(|&g| g == want), "gamma is K^-0.5");
        expect_t(c, "rstdOut", AclDType::F32, &[t, hk, 1]);
    }
    let qn = expect_t(&calls[0], "yOut", AclDType::BF16, &[t, hk, k]).addr;
    let kn = expect_t(&calls[1], "yOut", AclDType::BF16, &[t, hk, k]).addr;
    // beta f32 -> bf16 (the operators take bf16 beta).
    assert_eq!(names[2], "aclnnCast");
    assert_eq!(calls[2].t("self_").addr, io.beta.addr());
    let beta16 = expect_t(&calls[2], "out", AclDType::BF16, &[t, hv]).addr;

    // Four chunk calls: seqs 0+1 together, seq 2 cut at 64 (and its end, 70), seq 3.
    let chunk: Vec<(usize, Recorded)> = calls.iter().cloned().enumerate().filter(|(_, c)| c.op == "aclnnChunkGatedDeltaRule").collect();
    assert_eq!(names.len(), 3 + 4);
    let expected: [(usize, usize, Vec<i32>); 4] = [(0, 12, vec![5, 7]), (12, 64, vec![64]), (76, 6, vec![6]), (82, 3, vec![3])];
    // (from_slot per piece, slot per piece, snapshot slots per piece)
    let pieces: [Vec<(bool, Slot, Vec<Slot>)>; 4] = [
        vec![(false, s[0], vec![]), (true, s[1], vec![])],
        vec![(true, s[2], vec![s[4]])],
        vec![(true, s[2], vec![s[5]])],
        vec![(false, s[3], vec![])],
    ];
    // Copies and zeros checked below, after the first chunk call (its own gather comes before it).
    let (mut scattered, mut gathered) = (0, 0usize);
    for (c, ((idx, r), (t0, n, lens))) in chunk.iter().zip(expected.iter()).enumerate() {
        let b = lens.len();
        let row = |elems: usize, dt: usize| (t0 * elems * dt) as u64;
        let q = expect_t(r, "query", AclDType::BF16, &[*n, hk, k]);
        assert_eq!(q.addr, qn + row(hk * k, 2));
        assert_eq!(q.strides, contiguous_strides(&[*n, hk, k]));
        assert_eq!(expect_t(r, "key", AclDType::BF16, &[*n, hk, k]).addr, kn + row(hk * k, 2));
        assert_eq!(expect_t(r, "value", AclDType::BF16, &[*n, hv, v]).addr, io.v.addr() + row(hv * v, 2));
        assert_eq!(expect_t(r, "beta", AclDType::BF16, &[*n, hv]).addr, beta16 + row(hv, 2));
        assert_eq!(expect_t(r, "gOptional", AclDType::F32, &[*n, hv]).addr, io.g.addr() + row(hv, 4));
        assert_eq!(expect_t(r, "out", AclDType::BF16, &[*n, hv, v]).addr, io.o.addr() + row(hv * v, 2));
        let init = expect_t(r, "initialState", AclDType::BF16, &[b, hv, v, k]);
        let fin = expect_t(r, "finalState", AclDType::BF16, &[b, hv, v, k]);
        assert_eq!(init.strides, contiguous_strides(&[b, hv, v, k]));
        expect_t(r, "actualSeqLengths", AclDType::I32, &[b]);
        assert_eq!(&r.ints("actualSeqLengths"), lens);
        assert!(matches!(r.call, OpCall::ChunkGatedDeltaRule { scale, .. } if scale == (k as f32).powf(-0.5)));
        // State gathered into the operator's [B, HV, V, K] before, scattered to slots and snapshots after.
        let (pre, post) = around(&events, *idx);
        let mut want_pre = Vec::new();
        let mut want_post = Vec::new();
        for (j, (from_slot, slot, snaps)) in pieces[c].iter().enumerate() {
            let at = (j * sb) as u64;
            want_pre.push(if *from_slot {
                Event::Copy { dst: init.addr + at, src: slot_addr(*slot), bytes: sb }
            } else {
                Event::Zero { dst: init.addr + at, bytes: sb }
            });
            want_post.push((slot_addr(*slot), fin.addr + at, sb));
            want_post.extend(snaps.iter().map(|&sn| (slot_addr(sn), fin.addr + at, sb)));
        }
        // No host sync separates the calls (their copies are stream-ordered), so the
        // events between two calls are the earlier one's scatter, then the later one's gather.
        let pre_own = &pre[pre.len() - want_pre.len()..];
        assert_eq!(format!("{pre_own:?}"), format!("{want_pre:?}"), "call {c} gather");
        assert_eq!(copies(&post)[..want_post.len()], want_post, "call {c} scatter");
        scattered += want_post.len();
        if c > 0 {
            gathered += want_pre.len();
        }
    }
    // Nothing but those gathers and scatters from the first chunk call on.
    let first = events.iter().position(|e| matches!(e, Event::Call(r) if r.op == "aclnnChunkGatedDeltaRule")).unwrap();
    let moved = events[first..].iter().filter(|e| matches!(e, Event::Copy { .. } | Event::Zero { .. })).count();
    assert_eq!(moved, scattered + gathered, "copies other than gathers and scatters");
    assert_eq!(rec.live_tensors(), 0, "every aclTensor destroyed");
    // The per-stream workspace cache grew to the largest request and was reused.
    assert_eq!(rec.workspace_requests().iter().copied().max(), Some(4096));
    assert_eq!(d.memory().context().workspace_bytes(), 4096);
}

#[test]
fn decode_runs_the_recurrent_operator_in_place_on_the_pool() {
    let (rec, d) = setup(A2);
    let m = dims();
    let (hk, hv, k, v) = (m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut pool = d.new_pool(PoolConfig::new(2, 6, m).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(5).unwrap();
    let slots = [s[4], s[1], s[2]];
    let batch = DecodeBatch::new(&pool, &slots).unwrap();
    let mut io = delta_t(&d, &mut rng, 3, DType::BF16);
    let temporal = desc_addr(&pool, BufferKind::Temporal, 0);
    rec.clear();
    d.decode(&mut pool, 0, &batch, io.io()).unwrap();
    let rc = calls_named(&rec, "aclnnRecurrentGatedDeltaRule");
    assert_eq!(rc.len(), 1);
    let r = &rc[0];
    let st = expect_t(r, "stateRef", AclDType::BF16, &[7, hv, v, k]);
    assert_eq!(st.addr, temporal);
    assert_eq!(st.strides, contiguous_strides(&[7, hv, v, k]));
    // The pool reaches the operator through a parameter the bindings declare written (`aclTensor *stateRef`).
    assert_eq!(r.written, ["stateRef", "out"]);
    expect_t(r, "query", AclDType::BF16, &[3, hk, k]);
    expect_t(r, "key", AclDType::BF16, &[3, hk, k]);
    assert_eq!(expect_t(r, "value", AclDType::BF16, &[3, hv, v]).addr, io.v.addr());
    assert_eq!(expect_t(r, "beta", AclDType::BF16, &[3, hv]).addr, io.beta.addr(), "bf16 beta passes straight through");
    assert_eq!(expect_t(r, "g", AclDType::F32, &[3, hv]).addr, io.g.addr());
    assert_eq!(expect_t(r, "out", AclDType::BF16, &[3, hv, v]).addr, io.o.addr());
    assert!(r.opt("gk").is_none());
    assert_eq!(r.ints("ssmStateIndices"), slots.iter().map(|s| s.index() as i32).collect::<Vec<_>>());
    assert_eq!(r.ints("actualSeqLengths"), vec![1, 1, 1]);
    assert_eq!(r.ints("numAcceptedTokens"), vec![1, 1, 1]);
    expect_t(r, "ssmStateIndices", AclDType::I32, &[3]);
    assert!(copies(&rec.events()).is_empty(), "decode is in place: no state copies");
    assert_eq!(rec.live_tensors(), 0);
}

#[test]
fn verify_chain_index_tables_and_scratch_seeding() {
    let (rec, d) = setup(A2);
    let m = dims();
    let (hv, k, v) = (m.num_v_heads, m.head_k_dim, m.head_v_dim);
    let dd = 3;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut pool = spec_pool(&d, dd);
    let s = pool.alloc(4).unwrap();
    let slots = [s[3], s[0]];
    let batch = VerifyBatch::chain(&pool, &slots).unwrap();
    let mut io = delta_t(&d, &mut rng, 2 * dd, DType::BF16);
    let layer = 1;
    let (temporal, scratch) = (desc_addr(&pool, BufferKind::Temporal, layer), desc_addr(&pool, BufferKind::Scratch, layer));
    let sb = m.state_elems() * 2;
    rec.clear();
    d.verify(&mut pool, layer, &batch, io.io()).unwrap();
    let rc = calls_named(&rec, "aclnnRecurrentGatedDeltaRule");
    assert_eq!(rc.len(), 1, "a chain batch is one operator call");
    let r = &rc[0];
    let st = expect_t(r, "stateRef", AclDType::BF16, &[7 * dd, hv, v, k]);
    assert_eq!(st.addr, scratch);
    let want_idx: Vec<i32> = slots.iter().flat_map(|sl| (0..dd).map(move |t| (sl.index() * dd + t) as i32)).collect();
    assert_eq!(r.ints("ssmStateIndices"), want_idx);
    assert_eq!(r.ints("actualSeqLengths"), vec![dd as i32; 2]);
    assert_eq!(r.ints("numAcceptedTokens"), vec![1, 1]);
    expect_t(r, "query", AclDType::BF16, &[2 * dd, 2, k]);
    let idx = rec.calls().iter().position(|c| c.op == "aclnnRecurrentGatedDeltaRule").unwrap();
    let (pre, post) = around(&rec.events(), idx);
    let want: Vec<(u64, u64, usize)> =
        slots.iter().map(|sl| (scratch + (sl.index() * dd * sb) as u64, temporal + (sl.index() * sb) as u64, sb)).collect();
    assert_eq!(copies(&pre), want, "each slot's state seeds scratch step 0");
    assert!(post.is_empty());
    // The main state is never written by verify.
    let main = desc_addr(&pool, BufferKind::Temporal, 0)..temporal + (7 * sb) as u64;
    assert!(copies(&rec.events()).iter().all(|(dst, _, _)| !main.contains(dst)));
    assert_eq!(rec.live_tensors(), 0);
}

#[test]
fn verify_tree_runs_one_call_per_chain_segment_from_its_parent() {
    let (rec, d) = setup(A2);
    let m = dims();
    let (hk, k) = (m.num_k_heads, m.head_k_dim);
    let dd = 4;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut pool = spec_pool(&d, dd);
    let s = pool.alloc(3).unwrap();
    let slots = [s[2], s[0]];
    let parents = [-1, 0, 0, 2, -1, -1, 1, 1];
    let batch = VerifyBatch::tree(&pool, &slots, &parents).unwrap();
    let mut io = delta_t(&d, &mut rng, 2 * dd, DType::BF16);
    let layer = 0;
    let (temporal, scratch) = (desc_addr(&pool, BufferKind::Temporal, layer), desc_addr(&pool, BufferKind::Scratch, layer));
    let sb = m.state_elems() * 2;
    let row = |sl: Slot, t: usize| (sl.index() * dd + t) as i32;
    let raddr = |sl: Slot, t: usize| scratch + (row(sl, t) as usize * sb) as u64;
    let main = |sl: Slot| temporal + (sl.index() * sb) as u64;
    rec.clear();
    d.verify(&mut pool, layer, &batch, io.io()).unwrap();
    let all = rec.calls();
    let qn = all[0].t("yOut").addr;
    // (t0 in the packed batch, indices, source copied into the segment's first row)
    let (a, b) = (slots[0], slots[1]);
    let want: Vec<(usize, Vec<i32>, u64, u64)> = vec![
        (0, vec![row(a, 0), row(a, 1)], raddr(a, 0), main(a)),
        (2, vec![row(a, 2), row(a, 3)], raddr(a, 2), raddr(a, 0)),
        (4, vec![row(b, 0)], raddr(b, 0), main(b)),
        (5, vec![row(b, 1), row(b, 2)], raddr(b, 1), main(b)),
        (7, vec![row(b, 3)], raddr(b, 3), raddr(b, 1)),
    ];
    let events = rec.events();
    let pos: Vec<usize> = all.iter().enumerate().filter(|(_, c)| c.op == "aclnnRecurrentGatedDeltaRule").map(|(i, _)| i).collect();
    assert_eq!(pos.len(), want.len());
    for (&i, (t0, idx, dst, src)) in pos.iter().zip(&want) {
        let r = &all[i];
        let n = idx.len();
        assert_eq!(expect_t(r, "query", AclDType::BF16, &[n, hk, k]).addr, qn + (t0 * hk * k * 2) as u64);
        assert_eq!(r.ints("ssmStateIndices"), *idx);
        assert_eq!(r.ints("actualSeqLengths"), vec![n as i32]);
        assert_eq!(r.ints("numAcceptedTokens"), vec![1]);
        let (pre, _) = around(&events, i);
        assert_eq!(copies(&pre), vec![(*dst, *src, sb)], "segment at t0={t0} seeded from its parent");
    }
    assert_eq!(rec.live_tensors(), 0);
}

#[test]
fn f32_state_reaches_the_operators_as_f32_on_950() {
    let (rec, d) = setup(A950);
    let m = dims();
    let (hv, k, v) = (m.num_v_heads, m.head_k_dim, m.head_v_dim);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut pool = d.new_pool(PoolConfig::new(1, 4, m).with_state_dtype(DType::F32).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(2).unwrap();
    let batch = ExtendBatch::new(&pool, &[0, 3, 7], &s, &[true, true]).unwrap();
    let mut io = delta_t(&d, &mut rng, 7, DType::BF16);
    rec.clear();
    d.extend(&mut pool, 0, &batch, io.io()).unwrap();
    let r = calls_named(&rec, "aclnnChunkGatedDeltaRule").pop().unwrap();
    expect_t(&r, "initialState", AclDType::F32, &[2, hv, v, k]);
    expect_t(&r, "finalState", AclDType::F32, &[2, hv, v, k]);
    let sb = m.state_elems() * 4;
    let temporal = desc_addr(&pool, BufferKind::Temporal, 0);
    let (pre, _) = around(&rec.events(), rec.calls().iter().position(|c| c.op == "aclnnChunkGatedDeltaRule").unwrap());
    assert_eq!(
        copies(&pre).iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
        vec![(temporal + (s[0].index() * sb) as u64, sb), (temporal + (s[1].index() * sb) as u64, sb)]
    );
    let batch = DecodeBatch::new(&pool, &s).unwrap();
    let mut io = delta_t(&d, &mut rng, 2, DType::BF16);
    rec.clear();
    d.decode(&mut pool, 0, &batch, io.io()).unwrap();
    expect_t(&calls_named(&rec, "aclnnRecurrentGatedDeltaRule")[0], "stateRef", AclDType::F32, &[5, hv, v, k]);
}

#[test]
fn f32_state_verify_on_950_hands_f32_scratch_to_the_recurrent_operator() {
    let (rec, d) = setup(A950);
    let m = dims();
    let (hv, k, v) = (m.num_v_heads, m.head_k_dim, m.head_v_dim);
    let dd = 2;
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let cfg = PoolConfig::new(1, 4, m).with_state_dtype(DType::F32).with_conv_dtype(DType::BF16).with_speculative(dd);
    let mut pool = d.new_pool(cfg).unwrap();
    let s = pool.alloc(1).unwrap();
    let batch = VerifyBatch::chain(&pool, &s).unwrap();
    let mut io = delta_t(&d, &mut rng, dd, DType::BF16);
    rec.clear();
    d.verify(&mut pool, 0, &batch, io.io()).unwrap();
    let r = calls_named(&rec, "aclnnRecurrentGatedDeltaRule").pop().unwrap();
    let st = expect_t(&r, "stateRef", AclDType::F32, &[5 * dd, hv, v, k]);
    assert_eq!(st.addr, desc_addr(&pool, BufferKind::Scratch, 0));
    let sb = m.state_elems() * 4;
    assert_eq!(
        copies(&rec.events()),
        vec![(st.addr + (s[0].index() * dd * sb) as u64, desc_addr(&pool, BufferKind::Temporal, 0) + (s[0].index() * sb) as u64, sb)]
    );
}
