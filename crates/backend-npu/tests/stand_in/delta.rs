//! Marshalling tests against the recording function table (no NPU needed):
//! every operator call's tensors (dims, strides, dtypes, ND format, addresses)
//! against the operators' documented contracts, the index tables, the copies.

use crate::api::{AclDType, OpCall, TensorDesc, UnaryOp};
use crate::dispatch::chain_segments;
use crate::recording::{Event, Recorded, Recorder};
use crate::safe::DeviceBuffer;
use crate::{NpuDispatcher, SocFamily};
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

const A2: &str = "Ascend910B3";
const A950: &str = "Ascend950PR_9589";
const ND: i32 = 2;

fn setup(soc: &str) -> (Arc<Recorder>, NpuDispatcher) {
    let rec = Arc::new(Recorder::new(soc));
    let d = NpuDispatcher::with_api(rec.clone(), 0).expect("dispatcher over the recorder");
    (rec, d)
}

/// HK=2, HV=4, K=32, V=16 (K != V), W=4: conv_dim = 2*2*32 + 4*16 = 192.
fn dims() -> ModelDims {
    ModelDims::new(2, 4, 32, 16, 4).unwrap()
}

struct DevT {
    buf: DeviceBuffer,
    meta: TensorMeta,
}

impl DevT {
    fn r(&self) -> TensorRef<'_> {
        // SAFETY: the buffer holds `meta.span()` elements of `meta.dtype()` and outlives the view.
        unsafe { TensorRef::from_raw(self.buf.ptr(), self.meta) }
    }
    fn m(&mut self) -> TensorMut<'_> {
        // SAFETY: as above, and `&mut self` makes the view exclusive.
        unsafe { TensorMut::from_raw(self.buf.ptr(), self.meta) }
    }
    fn addr(&self) -> u64 {
        self.buf.ptr()
    }
}

/// A device tensor filled with fresh random values in (-1, 1) (never zeros).
fn rand_t(d: &NpuDispatcher, rng: &mut ChaCha8Rng, dtype: DType, shape: &[usize]) -> DevT {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n).map(|_| rng.gen_range(0.05f32..0.95) * if rng.gen() { 1.0 } else { -1.0 }).collect();
    let bytes = dtype.encode_vec(&vals);
    let ctx = d.memory().context();
    let buf = ctx.alloc(bytes.len()).unwrap();
    ctx.api().memcpy_h2d(buf.ptr(), &bytes).unwrap();
    DevT { buf, meta: TensorMeta::contiguous(Device::Npu(0), dtype, shape).unwrap() }
}

struct DeltaT {
    q: DevT,
    k: DevT,
    v: DevT,
    g: DevT,
    beta: DevT,
    o: DevT,
}

fn delta_t(d: &NpuDispatcher, rng: &mut ChaCha8Rng, t: usize, beta_dtype: DType) -> DeltaT {
    let m = dims();
    DeltaT {
        q: rand_t(d, rng, DType::BF16, &[t, m.num_k_heads, m.head_k_dim]),
        k: rand_t(d, rng, DType::BF16, &[t, m.num_k_heads, m.head_k_dim]),
        v: rand_t(d, rng, DType::BF16, &[t, m.num_v_heads, m.head_v_dim]),
        g: rand_t(d, rng, DType::F32, &[t, m.num_v_heads]),
        beta: rand_t(d, rng, beta_dtype, &[t, m.num_v_heads]),
        o: rand_t(d, rng, DType::BF16, &[t, m.num_v_heads, m.head_v_dim]),
    }
}

impl DeltaT {
    fn io(&mut self) -> DeltaIo<'_> {
        DeltaIo {
            q: self.q.r(),
            k: self.k.r(),
            v: self.v.r(),
            g: self.g.r(),
            beta: self.beta.r(),
            o: self.o.m(),
            params: DeltaParams::new(&dims()),
        }
    }
}

fn desc_addr(pool: &PoolOf<NpuDispatcher>, kind: BufferKind, layer: usize) -> u64 {
    pool.descriptors().into_iter().find(|d| d.kind == kind && d.layer == layer).unwrap().addr
}

/// Asserts the documented contract of one tensor argument.
fn expect_t(r: &Recorded, name: &str, dtype: AclDType, shape: &[usize]) -> TensorDesc {
    let d = r.t(name);
    assert_eq!(d.dtype, dtype, "{} {name} dtype", r.op);
    assert_eq!(d.shape, shape.iter().map(|&x| x as i64).collect::<Vec<_>>(), "{} {name} dims", r.op);
    assert_eq!(d.format, ND, "{} {name} format", r.op);
    assert_eq!(*d.strides.last().unwrap(), 1, "{} {name} innermost stride", r.op);
    d
}

fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    TensorDesc::contiguous(0, AclDType::F32, shape).strides
}

/// Copy/zero events right before call `idx` (back to the previous call or sync) and right after it (up to the next sync).
fn around(events: &[Event], call_idx: usize) -> (Vec<Event>, Vec<Event>) {
    let pos: Vec<usize> = events.iter().enumerate().filter(|(_, e)| matches!(e, Event::Call(_))).map(|(i, _)| i).collect();
    let p = pos[call_idx];
    let mut pre = Vec::new();
    for e in events[..p].iter().rev() {
        match e {
            Event::Call(_) | Event::Sync => break,
            other => pre.push(other.clone()),
        }
    }
    pre.reverse();
    let mut post = Vec::new();
    for e in &events[p + 1..] {
        match e {
            Event::Call(_) | Event::Sync => break,
            other => post.push(other.clone()),
        }
    }
    (pre, post)
}

fn copies(ev: &[Event]) -> Vec<(u64, u64, usize)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Copy { dst, src, bytes } => Some((*dst, *src, *bytes)),
            _ => None,
        })
        .collect()
}

fn calls_named(rec: &Recorder, name: &str) -> Vec<Recorded> {
    rec.calls().into_iter().filter(|c| c.op == name).collect()
}

#[test]
fn new_without_cann_is_a_typed_unavailable_error() {
    if crate::api::Cann::load().is_ok() {
        eprintln!("CANN is installed here; the missing-library path cannot be exercised");
        return;
    }
    let fake = std::env::temp_dir().join("deltanet-npu-no-cann-here");
    std::env::set_var("ASCEND_TOOLKIT_HOME", &fake);
    let err = NpuDispatcher::new(0).unwrap_err();
    std::env::remove_var("ASCEND_TOOLKIT_HOME");
    match err {
        Error::Unavailable { backend, reason } => {
            assert_eq!(backend, "npu");
            assert!(reason.contains("libascendcl.so"), "names the library: {reason}");
            assert!(reason.contains("ASCEND_TOOLKIT_HOME") && reason.contains("ASCEND_HOME_PATH"), "names the env vars: {reason}");
            assert!(reason.contains(&fake.display().to_string()), "names the searched root: {reason}");
            assert!(reason.contains("/usr/local/Ascend/ascend-toolkit/latest"), "names the default root: {reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let p = crate::probe().unwrap_err();
    assert!(p.contains("libascendcl.so"), "{p}");
}

#[test]
fn soc_names_and_capabilities() {
    assert_eq!(SocFamily::from_soc_name("Ascend910B4"), SocFamily::A2);
    assert_eq!(SocFamily::from_soc_name("Ascend910_9391"), SocFamily::A3);
    assert_eq!(SocFamily::from_soc_name("Ascend950PR_9589"), SocFamily::Ascend950);
    assert!(matches!(SocFamily::from_soc_name("Ascend310P3"), SocFamily::Other(_)));
    let caps = SocFamily::A2.capabilities(0);
    assert_eq!(caps.native_layout, LayoutKind::VMajor);
    assert_eq!(caps.conv_layout, ConvLayoutKind::ChannelsLast);
    assert_eq!(caps.state_dtypes, vec![DType::BF16]);
    assert_eq!(caps.input_dtypes, vec![DType::BF16]);
    assert_eq!(caps.max_draft_tokens, Some(8));
    assert_eq!(caps.max_head_dim, Some(128));
    assert_eq!(SocFamily::Ascend950.capabilities(0).state_dtypes, vec![DType::BF16, DType::F32]);
    let rec = Arc::new(Recorder::new("Ascend310P3"));
    assert!(matches!(NpuDispatcher::with_api(rec, 0), Err(Error::Unsupported { .. })));
}

#[test]
fn pool_refuses_what_the_operators_cannot_run() {
    let (rec, a2) = setup(A2);
    let base = PoolConfig::new(2, 4, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16);
    assert!(a2.new_pool(base).is_ok());
    // An f32 pool must never reach the bf16-only chunk operator on A2/A3.
    assert!(matches!(a2.new_pool(base.with_state_dtype(DType::F32)), Err(Error::UnsupportedDType { .. })));
    assert!(matches!(a2.new_pool(base.with_conv_dtype(DType::F32)), Err(Error::UnsupportedDType { .. })));
    assert!(a2.new_pool(base.with_speculative(8)).is_ok());
    assert!(matches!(a2.new_pool(base.with_speculative(9)), Err(Error::Unsupported { .. })));
    let bad = |hk, hv, k, v, w| PoolConfig { dims: ModelDims::new(hk, hv, k, v, w).unwrap(), ..base };
    assert!(matches!(a2.new_pool(bad(2, 4, 256, 16, 4)), Err(Error::Unsupported { .. })), "K > 128");
    assert!(matches!(a2.new_pool(bad(2, 128, 32, 16, 4)), Err(Error::Unsupported { .. })), "HV > 64");
    assert!(matches!(a2.new_pool(bad(2, 4, 32, 16, 5)), Err(Error::Unsupported { .. })), "W = 5");
    assert!(matches!(a2.new_pool(bad(1, 1, 5, 3, 4)), Err(Error::Unsupported { .. })), "conv_dim 13");
    let tiled = PoolConfig { dims: dims().with_head_mapping(HeadMapping::Tiled), ..base };
    assert!(matches!(a2.new_pool(tiled), Err(Error::Unsupported { .. })));
    // Nothing was allocated by the refused pools: only the accepted ones' buffers came and went.
    assert_eq!(rec.live_allocs(), 0);
    let (_, n950) = setup(A950);
    assert!(n950.new_pool(base.with_state_dtype(DType::F32)).is_ok());
}

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

    // q and k: L2 norm in f32 (Cast, Mul, ReduceSum(dim 2, keepdim), Adds(1e-6), Rsqrt, Mul, Cast to bf16).
    let names: Vec<&str> = calls.iter().map(|c| c.op).collect();
    let l2 = ["aclnnCast", "aclnnMul", "aclnnReduceSum", "aclnnAdds", "aclnnRsqrt", "aclnnMul", "aclnnCast"];
    assert_eq!(&names[..7], &l2);
    assert_eq!(&names[7..14], &l2);
    assert_eq!(calls[0].t("self_").addr, io.q.addr());
    assert_eq!(calls[7].t("self_").addr, io.k.addr());
    expect_t(&calls[0], "out", AclDType::F32, &[t, hk, k]);
    expect_t(&calls[2], "out", AclDType::F32, &[t, hk, 1]);
    assert_eq!(calls[2].int_arrays, vec![vec![2]]);
    assert!(matches!(calls[2].call, OpCall::ReduceSum { keep_dim: true, dtype: AclDType::F32, .. }));
    assert_eq!(calls[3].scalars, vec![L2NORM_EPS, 1.0]);
    let qn = expect_t(&calls[6], "out", AclDType::BF16, &[t, hk, k]).addr;
    let kn = expect_t(&calls[13], "out", AclDType::BF16, &[t, hk, k]).addr;
    // beta f32 -> bf16 (the operators take bf16 beta).
    assert_eq!(names[14], "aclnnCast");
    assert_eq!(calls[14].t("self_").addr, io.beta.addr());
    let beta16 = expect_t(&calls[14], "out", AclDType::BF16, &[t, hv]).addr;

    // Four chunk calls: seqs 0+1 together, seq 2 cut at 64 (and its end, 70), seq 3.
    let chunk: Vec<(usize, Recorded)> = calls.iter().cloned().enumerate().filter(|(_, c)| c.op == "aclnnChunkGatedDeltaRule").collect();
    assert_eq!(names.len(), 15 + 4);
    let expected: [(usize, usize, Vec<i32>); 4] = [(0, 12, vec![5, 7]), (12, 64, vec![64]), (76, 6, vec![6]), (82, 3, vec![3])];
    // (from_slot per piece, slot per piece, snapshot slots per piece)
    let pieces: [Vec<(bool, Slot, Vec<Slot>)>; 4] = [
        vec![(false, s[0], vec![]), (true, s[1], vec![])],
        vec![(true, s[2], vec![s[4]])],
        vec![(true, s[2], vec![s[5]])],
        vec![(false, s[3], vec![])],
    ];
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
        assert_eq!(format!("{pre:?}"), format!("{want_pre:?}"), "call {c} gather");
        assert_eq!(copies(&post), want_post, "call {c} scatter");
    }
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

fn spec_pool(d: &NpuDispatcher, draft: usize) -> PoolOf<NpuDispatcher> {
    d.new_pool(PoolConfig::new(2, 6, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16).with_speculative(draft)).unwrap()
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
    let batch = VerifyBatch::chain(&pool, &slots, dd).unwrap();
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
fn chain_segments_of_trees() {
    assert_eq!(chain_segments(&[-1, 0, 1, 2]), vec![(0, 4, None)]);
    assert_eq!(chain_segments(&[-1, 0, 0, 2]), vec![(0, 2, None), (2, 4, Some(0))]);
    assert_eq!(chain_segments(&[-1, -1, 1, 1]), vec![(0, 1, None), (1, 3, None), (3, 4, Some(1))]);
    assert_eq!(chain_segments(&[-1, 0, 0, 0]), vec![(0, 2, None), (2, 3, Some(0)), (3, 4, Some(0))]);
    assert_eq!(chain_segments(&[-1]), vec![(0, 1, None)]);
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
    let batch = VerifyBatch::tree(&pool, &slots, dd, &parents).unwrap();
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
    let qn = all[6].t("out").addr;
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
fn commit_copies_the_accepted_step_of_a_vmajor_pool() {
    let (rec, d) = setup(A2);
    let m = dims();
    let dd = 3;
    let mut pool = spec_pool(&d, dd);
    let s = pool.alloc(4).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let geo = *pool.geometry();
    let (sb, cb) = (geo.state_bytes(), geo.conv_bytes());
    let layer = 1;
    // Random scratch, as a verify of the two committed slots would leave it (current).
    let vb = VerifyBatch::chain(&pool, &[s[0], s[1]], dd).unwrap();
    pool.kernel_parts(layer, KernelAccess::Verify(&vb), |parts| {
        let scratch = parts.scratch.unwrap();
        let bytes: Vec<u8> = (0..parts.memory.len(scratch)).map(|_| rng.gen()).collect();
        parts.memory.write(scratch, 0, &bytes).unwrap();
        let windows = parts.windows.unwrap();
        let bytes: Vec<u8> = (0..parts.memory.len(windows)).map(|_| rng.gen()).collect();
        parts.memory.write(windows, 0, &bytes).unwrap();
        Ok(())
    })
    .unwrap();
    let batch = CommitBatch::new(&pool, &[s[0], s[1]], &[2, 0], &[Some(s[3]), None]).unwrap();
    let before = pool.export(s[2]).unwrap();
    rec.clear();
    d.commit(&mut pool, layer, &batch).unwrap();
    let (temporal, conv) = (desc_addr(&pool, BufferKind::Temporal, layer), desc_addr(&pool, BufferKind::Conv, layer));
    let (scratch, windows) = (desc_addr(&pool, BufferKind::Scratch, layer), desc_addr(&pool, BufferKind::ConvWindows, layer));
    let mut want = Vec::new();
    for (src_slot, a, dsts) in [(s[0], 2usize, vec![s[0], s[3]]), (s[1], 0, vec![s[1]])] {
        for dst in dsts {
            want.push((temporal + (dst.index() * sb) as u64, scratch + ((src_slot.index() * dd + a) * sb) as u64, sb));
            want.push((conv + (dst.index() * cb) as u64, windows + ((src_slot.index() * dd + a) * cb) as u64, cb));
        }
    }
    assert_eq!(copies(&rec.events()), want);
    assert!(rec.calls().is_empty(), "commit is copies only");
    // The bytes really moved: the committed slot exports (canonical K-major) to the scratch step's V-major state transposed.
    let mem = d.memory().clone();
    let parts = pool.parts_mut();
    let mut raw = vec![0u8; sb];
    mem.read(parts.scratch.unwrap(), geo.scratch_offset(layer, s[0].index(), 2), &mut raw).unwrap();
    let mut canon = vec![[0u8; 2]; sb / 2];
    let src: Vec<[u8; 2]> = raw.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
    convert_state(LayoutKind::VMajor, LayoutKind::KMajor, m.num_v_heads, m.head_k_dim, m.head_v_dim, &src, &mut canon).unwrap();
    let exported = pool.export(s[3]).unwrap();
    assert_eq!(&exported.temporal[layer * sb..(layer + 1) * sb], canon.concat().as_slice());
    assert_eq!(pool.export(s[2]).unwrap(), before, "untouched slots stay untouched");
}

struct ConvT {
    x: DevT,
    w: DevT,
    b: DevT,
    out: DevT,
}

fn conv_t(d: &NpuDispatcher, rng: &mut ChaCha8Rng, t: usize) -> ConvT {
    let c = dims().conv_dim();
    ConvT {
        x: rand_t(d, rng, DType::BF16, &[t, c]),
        w: rand_t(d, rng, DType::F32, &[c, 4]),
        b: rand_t(d, rng, DType::F32, &[c]),
        out: rand_t(d, rng, DType::BF16, &[t, c]),
    }
}

impl ConvT {
    fn io(&mut self) -> ConvIo<'_> {
        ConvIo { x: self.x.r(), weight: self.w.r(), bias: Some(self.b.r()), out: self.out.m() }
    }
}

/// The weight `[C, W]` f32 is cast into the operators' `[W, C]` (strided read), the bias likewise.
fn check_conv_weights(calls: &[Recorded], io: &ConvT) -> (u64, u64) {
    let c = dims().conv_dim();
    let w = calls[0].t("self_");
    assert_eq!((w.addr, w.dtype, w.shape.clone(), w.strides.clone()), (io.w.addr(), AclDType::F32, vec![4, c as i64], vec![1, 4]));
    let w16 = expect_t(&calls[0], "out", AclDType::BF16, &[4, c]).addr;
    assert_eq!(expect_t(&calls[1], "self_", AclDType::F32, &[c]).addr, io.b.addr());
    let b16 = expect_t(&calls[1], "out", AclDType::BF16, &[c]).addr;
    (w16, b16)
}

fn randomise_conv_state(d: &NpuDispatcher, pool: &mut PoolOf<NpuDispatcher>, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mem = d.memory().clone();
    let parts = pool.parts_mut();
    let bytes: Vec<u8> = (0..mem.len(parts.conv)).map(|_| rng.gen()).collect();
    mem.write(parts.conv, 0, &bytes).unwrap();
    bytes
}

fn read_dev(d: &NpuDispatcher, addr: u64, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    d.memory().context().api().memcpy_d2h(&mut out, addr).unwrap();
    out
}

#[test]
fn conv_ops_are_refused_where_undocumented() {
    let (rec, d) = setup(A2);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut pool = d.new_pool(PoolConfig::new(1, 4, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(1).unwrap();
    let batch = ExtendBatch::new(&pool, &[0, 3], &s, &[true]).unwrap();
    let mut io = conv_t(&d, &mut rng, 3);
    rec.clear();
    assert!(matches!(d.conv_extend(&mut pool, 0, &batch, io.io()), Err(Error::Unsupported { .. })));
    assert!(rec.calls().is_empty());
}

#[test]
fn conv_extend_marshals_causal_conv1d_fn_and_snapshot_windows() {
    let (rec, d) = setup(A950);
    let m = dims();
    let (c, w1) = (m.conv_dim(), m.conv_state_len());
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut pool = d.new_pool(PoolConfig::new(2, 6, m).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(4).unwrap();
    let batch = ExtendBatch::new(&pool, &[0, 5, 7], &s[..2], &[true, false])
        .unwrap()
        .with_snapshots(&pool, &[Snapshot { seq: 0, position: 2, slot: s[2] }, Snapshot { seq: 1, position: 2, slot: s[3] }])
        .unwrap();
    let state = randomise_conv_state(&d, &mut pool, &mut rng);
    let mut io = conv_t(&d, &mut rng, 7);
    let layer = 1;
    let conv = desc_addr(&pool, BufferKind::Conv, layer);
    let cb = pool.geometry().conv_bytes();
    let rb = c * 2;
    rec.clear();
    d.conv_extend(&mut pool, layer, &batch, io.io()).unwrap();
    let calls = rec.calls();
    let (w16, b16) = check_conv_weights(&calls, &io);
    assert_eq!(calls.len(), 3);
    let r = &calls[2];
    assert_eq!(r.op, "aclnnCausalConv1dFn");
    assert_eq!(expect_t(r, "x", AclDType::BF16, &[7, c]).addr, io.x.addr());
    assert_eq!(expect_t(r, "y", AclDType::BF16, &[7, c]).addr, io.out.addr());
    assert_eq!(expect_t(r, "weight", AclDType::BF16, &[4, c]).addr, w16);
    assert_eq!(expect_t(r, "biasOptional", AclDType::BF16, &[c]).addr, b16);
    let st = expect_t(r, "convStatesRef", AclDType::BF16, &[7, w1, c]);
    assert_eq!((st.addr, st.strides.clone()), (conv, contiguous_strides(&[7, w1, c])));
    assert_eq!(r.ints("queryStartLocOptional"), vec![0, 5, 7]);
    assert_eq!(r.ints("cacheIndicesOptional"), vec![s[0].index() as i32, s[1].index() as i32]);
    assert_eq!(r.ints("initialStateModeOptional"), vec![1, 0]);
    assert!(matches!(r.call, OpCall::CausalConv1dFn { activation, null_block_id: -1, .. } if activation.to_str() == Ok("silu")));
    // Snapshot windows (channels-last [W-1, C]): seq 0 after 2 tokens = [state row 2, x0, x1];
    // seq 1 (no initial state) after 2 tokens = [0, x5, x6]. Written before the operator runs.
    let layer_state = |sl: Slot, row: usize| {
        let off = (layer * 7 + sl.index()) * cb + row * rb;
        state[off..off + rb].to_vec()
    };
    let xrow = |u: usize| read_dev(&d, io.x.addr() + (u * rb) as u64, rb);
    let snap0 = read_dev(&d, conv + (s[2].index() * cb) as u64, cb);
    assert_eq!(snap0, [layer_state(s[0], 2), xrow(0), xrow(1)].concat());
    let snap1 = read_dev(&d, conv + (s[3].index() * cb) as u64, cb);
    assert_eq!(snap1, [vec![0u8; rb], xrow(5), xrow(6)].concat());
    let (_, post) = around(&rec.events(), 2);
    assert!(post.is_empty());
    assert_eq!(rec.live_tensors(), 0);
}

#[test]
fn conv_update_marshals_causal_conv1d_update() {
    let (rec, d) = setup(A950);
    let m = dims();
    let (c, w1) = (m.conv_dim(), m.conv_state_len());
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut pool = d.new_pool(PoolConfig::new(1, 6, m).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(3).unwrap();
    let slots = [s[2], s[0]];
    let batch = DecodeBatch::new(&pool, &slots).unwrap();
    let mut io = conv_t(&d, &mut rng, 2);
    rec.clear();
    d.conv_update(&mut pool, 0, &batch, io.io()).unwrap();
    let r = calls_named(&rec, "aclnnCausalConv1dUpdate").pop().unwrap();
    let x = expect_t(&r, "x", AclDType::BF16, &[2, 1, c]);
    assert_eq!((x.addr, x.strides[0]), (io.x.addr(), c as i64));
    assert_eq!(expect_t(&r, "y", AclDType::BF16, &[2, 1, c]).addr, io.out.addr());
    expect_t(&r, "weight", AclDType::BF16, &[4, c]);
    assert_eq!(expect_t(&r, "convStatesRef", AclDType::BF16, &[7, w1, c]).addr, desc_addr(&pool, BufferKind::Conv, 0));
    assert_eq!(r.ints("cacheIndicesOptional"), vec![s[2].index() as i32, s[0].index() as i32]);
    assert!(r.opt("queryStartLocOptional").is_none() && r.opt("numAcceptedTokensOptional").is_none());
    assert!(matches!(r.call, OpCall::CausalConv1dUpdate { max_query_len: -1, null_block_id: -1, .. }));
    assert_eq!(rec.live_tensors(), 0);
}

#[test]
fn conv_verify_builds_every_window_and_leaves_the_slot_alone() {
    let (rec, d) = setup(A950);
    let m = dims();
    let (c, w1) = (m.conv_dim(), m.conv_state_len());
    let dd = 3;
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let mut pool = spec_pool(&d, dd);
    let s = pool.alloc(3).unwrap();
    let slots = [s[1], s[2]];
    // Request 0 a tree (steps 1 and 2 both children of 0), request 1 a chain.
    let parents = [-1, 0, 0, -1, 0, 1];
    let batch = VerifyBatch::tree(&pool, &slots, dd, &parents).unwrap();
    let state = randomise_conv_state(&d, &mut pool, &mut rng);
    let mut io = conv_t(&d, &mut rng, 2 * dd);
    let layer = 1;
    let windows = desc_addr(&pool, BufferKind::ConvWindows, layer);
    let cb = pool.geometry().conv_bytes();
    let rb = c * 2;
    let digest = {
        let (conv, temporal) = pool.buffers();
        let mut a = vec![0u8; d.memory().len(conv)];
        d.memory().read(conv, 0, &mut a).unwrap();
        let mut b = vec![0u8; d.memory().len(temporal)];
        d.memory().read(temporal, 0, &mut b).unwrap();
        (a, b)
    };
    rec.clear();
    d.conv_verify(&mut pool, layer, &batch, io.io()).unwrap();
    let r = calls_named(&rec, "aclnnCausalConv1dFn").pop().unwrap();
    // Segments: req 0 [0,2) and [2,3) (parent 0); req 1 [3,6).
    assert_eq!(r.ints("queryStartLocOptional"), vec![0, 2, 3, 6]);
    let row = |sl: Slot, t: usize| (sl.index() * dd + t) as i32;
    assert_eq!(r.ints("cacheIndicesOptional"), vec![row(slots[0], 1), row(slots[0], 2), row(slots[1], 2)]);
    assert_eq!(r.ints("initialStateModeOptional"), vec![1, 1, 1]);
    let st = expect_t(&r, "convStatesRef", AclDType::BF16, &[7 * dd, w1, c]);
    assert_eq!(st.addr, windows);
    assert_eq!(expect_t(&r, "x", AclDType::BF16, &[2 * dd, c]).addr, io.x.addr());
    let srow = |sl: Slot, j: usize| {
        let off = (layer * 7 + sl.index()) * cb + j * rb;
        state[off..off + rb].to_vec()
    };
    let xrow = |u: usize| read_dev(&d, io.x.addr() + (u * rb) as u64, rb);
    let win = |sl: Slot, t: usize| read_dev(&d, windows + ((sl.index() * dd + t) * cb) as u64, cb);
    let (a, b) = (slots[0], slots[1]);
    // Inner steps hold their own windows; segment-final rows hold the operator's initial state.
    assert_eq!(win(a, 0), [srow(a, 1), srow(a, 2), xrow(0)].concat(), "window after step 0");
    assert_eq!(win(a, 1), [srow(a, 0), srow(a, 1), srow(a, 2)].concat(), "segment [0,2) starts from the slot");
    assert_eq!(win(a, 2), [srow(a, 1), srow(a, 2), xrow(0)].concat(), "segment [2,3) starts from step 0's window");
    assert_eq!(win(b, 0), [srow(b, 1), srow(b, 2), xrow(3)].concat());
    assert_eq!(win(b, 1), [srow(b, 2), xrow(3), xrow(4)].concat());
    assert_eq!(win(b, 2), [srow(b, 0), srow(b, 1), srow(b, 2)].concat());
    let after = {
        let (conv, temporal) = pool.buffers();
        let mut a = vec![0u8; d.memory().len(conv)];
        d.memory().read(conv, 0, &mut a).unwrap();
        let mut b = vec![0u8; d.memory().len(temporal)];
        d.memory().read(temporal, 0, &mut b).unwrap();
        (a, b)
    };
    assert!(after == digest, "verify leaves the main conv and recurrent state untouched");
    assert_eq!(rec.live_tensors(), 0);
}

#[test]
fn gate_marshals_elementwise_operators() {
    let (rec, d) = setup(A2);
    let m = dims();
    let hv = m.num_v_heads;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let t = 9;
    let (a, b) = (rand_t(&d, &mut rng, DType::BF16, &[t, hv]), rand_t(&d, &mut rng, DType::BF16, &[t, hv]));
    let (al, dt) = (rand_t(&d, &mut rng, DType::F32, &[hv]), rand_t(&d, &mut rng, DType::F32, &[hv]));
    let (mut g, mut beta) = (rand_t(&d, &mut rng, DType::F32, &[t, hv]), rand_t(&d, &mut rng, DType::F32, &[t, hv]));
    let (ga, ba) = (g.addr(), beta.addr());
    rec.clear();
    d.gate(&m, GateIo { a: a.r(), b: b.r(), a_log: al.r(), dt_bias: dt.r(), g: g.m(), beta: beta.m() }).unwrap();
    let calls = rec.calls();
    let names: Vec<&str> = calls.iter().map(|c| c.op).collect();
    assert_eq!(names, ["aclnnCast", "aclnnAdd", "aclnnSoftplus", "aclnnExp", "aclnnMul", "aclnnNeg", "aclnnCast", "aclnnSigmoid"]);
    assert_eq!(calls[0].t("self_").addr, a.addr());
    assert_eq!(expect_t(&calls[1], "other", AclDType::F32, &[hv]).addr, dt.addr());
    assert_eq!(calls[1].scalars, vec![1.0]);
    assert_eq!(calls[2].scalars, vec![1.0, 20.0], "softplus beta 1, threshold 20");
    assert_eq!(expect_t(&calls[3], "self_", AclDType::F32, &[hv]).addr, al.addr());
    assert!(matches!(calls[5].call, OpCall::Unary { op: UnaryOp::Neg, .. }));
    assert_eq!(expect_t(&calls[5], "out", AclDType::F32, &[t, hv]).addr, ga);
    assert_eq!(calls[6].t("self_").addr, b.addr());
    assert_eq!(expect_t(&calls[7], "out", AclDType::F32, &[t, hv]).addr, ba);
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
fn every_issuing_thread_binds_the_device_once() {
    let (rec, d) = setup(A2);
    let mut pool = d.new_pool(PoolConfig::new(1, 4, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(2).unwrap();
    assert_eq!(rec.set_device_threads(), vec![std::thread::current().id()]);
    let d = Arc::new(d);
    let other = {
        let d = d.clone();
        std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(13);
            let batch = DecodeBatch::new(&pool, &s).unwrap();
            let mut io = delta_t(&d, &mut rng, 2, DType::BF16);
            d.decode(&mut pool, 0, &batch, io.io()).unwrap();
            d.decode(&mut pool, 0, &batch, io.io()).unwrap();
            std::thread::current().id()
        })
        .join()
        .unwrap()
    };
    assert_eq!(rec.set_device_threads(), vec![std::thread::current().id(), other], "bound once on the new thread");
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
    let batch = VerifyBatch::chain(&pool, &s, dd).unwrap();
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

#[test]
fn npu_memory_checks_ranges_and_overlap() {
    let (_rec, d) = setup(A2);
    let mem = d.memory().clone();
    assert_eq!(mem.device(), Device::Npu(0));
    let mut a = mem.alloc_zeroed(64).unwrap();
    let mut b = mem.alloc_zeroed(16).unwrap();
    let mut out = [1u8; 64];
    mem.read(&a, 0, &mut out).unwrap();
    assert_eq!(out, [0u8; 64], "alloc_zeroed zeroes");
    mem.write(&mut a, 8, &[1, 2, 3, 4]).unwrap();
    mem.copy_within(&mut a, 8, 32, 4).unwrap();
    mem.copy_between(&a, 32, &mut b, 12, 4).unwrap();
    let mut got = [0u8; 4];
    mem.read(&b, 12, &mut got).unwrap();
    assert_eq!(got, [1, 2, 3, 4]);
    mem.zero(&mut b, 12, 2).unwrap();
    mem.read(&b, 12, &mut got).unwrap();
    assert_eq!(got, [0, 0, 3, 4]);
    assert!(mem.copy_within(&mut a, 8, 10, 4).is_err(), "overlapping ranges");
    assert!(mem.copy_between(&a, 62, &mut b, 0, 4).is_err());
    assert!(mem.write(&mut b, 15, &[1, 2]).is_err());
    assert!(mem.zero(&mut b, 0, 17).is_err());
    let empty = mem.alloc_zeroed(0).unwrap();
    assert_eq!(mem.len(&empty), 0);
}

/// One call of every operator, with distinct dummy handles (never dereferenced).
fn every_op_call() -> Vec<OpCall> {
    use crate::api::{IntArrayHandle, ScalarHandle, TensorHandle as T};
    let s = ScalarHandle(100);
    vec![
        OpCall::ChunkGatedDeltaRule {
            query: T(1),
            key: T(2),
            value: T(3),
            beta: T(4),
            initial_state: T(5),
            actual_seq_lengths: T(6),
            g: Some(T(7)),
            scale: 0.125,
            out: T(8),
            final_state: T(9),
        },
        OpCall::RecurrentGatedDeltaRule {
            query: T(1),
            key: T(2),
            value: T(3),
            beta: T(4),
            state: T(5),
            actual_seq_lengths: T(6),
            ssm_state_indices: T(7),
            g: Some(T(8)),
            gk: None,
            num_accepted_tokens: T(9),
            scale: 0.125,
            out: T(10),
        },
        OpCall::CausalConv1dFn {
            x: T(1),
            weight: T(2),
            conv_states: T(3),
            bias: None,
            query_start_loc: Some(T(4)),
            cache_indices: Some(T(5)),
            initial_state_mode: Some(T(6)),
            activation: c"silu",
            null_block_id: -1,
            block_size_to_align: 0,
            y: T(7),
        },
        OpCall::CausalConv1dUpdate {
            x: T(1),
            weight: T(2),
            conv_states: T(3),
            bias: None,
            query_start_loc: Some(T(4)),
            cache_indices: Some(T(5)),
            num_accepted_tokens: Some(T(6)),
            activation: c"silu",
            null_block_id: -1,
            max_query_len: -1,
            y: T(7),
        },
        OpCall::Unary { op: UnaryOp::Exp, input: T(1), out: T(2) },
        OpCall::Mul { a: T(1), b: T(2), out: T(3) },
        OpCall::Add { a: T(1), b: T(2), alpha: s, out: T(3) },
        OpCall::Adds { input: T(1), other: s, alpha: ScalarHandle(101), out: T(2) },
        OpCall::Softplus { input: T(1), beta: s, threshold: ScalarHandle(101), out: T(2) },
        OpCall::Cast { input: T(1), dtype: AclDType::F32, out: T(2) },
        OpCall::ReduceSum { input: T(1), dims: IntArrayHandle(200), keep_dim: true, dtype: AclDType::F32, out: T(2) },
    ]
}

#[test]
fn every_operator_argument_list_matches_its_binding() {
    use crate::recording::check_args;
    for call in every_op_call() {
        let args = call.args();
        let written = check_args(call.ffi_type(), &args).unwrap_or_else(|e| panic!("{e}"));
        let written: Vec<&str> = args.iter().zip(&written).filter(|(_, w)| **w).map(|((n, _), _)| *n).collect();
        // What each operator writes, per its public header (ops-transformer / CANN API reference).
        let expected: &[&str] = match call {
            OpCall::ChunkGatedDeltaRule { .. } => &["out", "finalState"],
            OpCall::RecurrentGatedDeltaRule { .. } => &["stateRef", "out"],
            OpCall::CausalConv1dFn { .. } | OpCall::CausalConv1dUpdate { .. } => &["convStatesRef", "y"],
            _ => &["out"],
        };
        assert_eq!(written, expected, "{}", call.name());
    }
}

#[test]
fn argument_lists_that_disagree_with_the_bindings_are_refused() {
    use crate::api::Arg;
    use crate::recording::check_args;
    let call = &every_op_call()[1];
    let ty = call.ffi_type();
    let good = call.args();
    assert!(check_args(ty, &good).is_ok());
    let mut renamed = good.clone();
    renamed[4].0 = "state";
    assert!(check_args(ty, &renamed).unwrap_err().contains("`stateRef`"));
    let mut swapped = good.clone();
    swapped.swap(0, 1);
    assert!(check_args(ty, &swapped).unwrap_err().contains("argument 0 is `key`"));
    let mut wrong_kind = good.clone();
    wrong_kind[10].1 = Arg::I64(1);
    assert!(check_args(ty, &wrong_kind).unwrap_err().contains("`f32`"));
    let short = &good[..good.len() - 1];
    assert!(check_args(ty, short).unwrap_err().contains("11 arguments, the bindings take 12"));
}
