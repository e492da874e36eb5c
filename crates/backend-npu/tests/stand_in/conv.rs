//! The CausalConv1d operators: weights cast to `[W, C]`, the state tables,
//! snapshot and draft windows built by copies.

use crate::common::*;
use deltanet_backend_npu::api::{AclDType, OpCall};
use deltanet_backend_npu::testing::Recorded;
use deltanet_backend_npu::NpuDispatcher;
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    let batch = VerifyBatch::tree(&pool, &slots, &parents).unwrap();
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
