//! Pool lifecycle, layout round trips through the pool, and every error path
//! of pool and batch construction, with the pool digest checked unchanged
//! after each rejected call.

use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dims(hk: usize, hv: usize, k: usize, v: usize) -> ModelDims {
    ModelDims::new(hk, hv, k, v, 4).unwrap()
}

fn pool_of<L: StateLayout>(cfg: PoolConfig) -> StatePool<HostMemory, L> {
    StatePool::new(HostMemory, cfg, &Capabilities::host_reference(L::KIND)).unwrap()
}

fn random_state(cfg: &PoolConfig, seed: u64) -> HostState {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t: Vec<f32> = (0..cfg.layers * cfg.dims.state_elems()).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let c: Vec<f32> = (0..cfg.layers * cfg.dims.conv_elems()).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    HostState::from_f32(cfg.layers, cfg.dims, cfg.state_dtype, cfg.conv_dtype, &t, &c).unwrap()
}

/// Asserts `f` fails with an error matching `pat` and leaves the pool's bytes unchanged.
macro_rules! rejects {
    ($pool:expr, $call:expr, $pat:pat $(if $guard:expr)?) => {{
        let before = $pool.digest().unwrap();
        let free_before = $pool.free_count();
        let r = $call;
        assert!(matches!(r, Err($pat) $(if $guard)?), "expected {}, got {:?}", stringify!($pat), r.as_ref().err());
        assert_eq!($pool.digest().unwrap(), before, "pool bytes changed by a rejected call");
        assert_eq!($pool.free_count(), free_before, "slot bookkeeping changed by a rejected call");
    }};
}

#[test]
fn export_import_round_trip_across_layouts_exact() {
    // K != V, odd sizes, both dtypes, channels-first and channels-last conv
    for &(hk, hv, k, v) in &[(1, 1, 3, 5), (1, 2, 16, 48), (2, 4, 17, 9), (1, 4, 64, 32)] {
        for sd in [DType::F32, DType::BF16] {
            for cd in [DType::F32, DType::BF16, DType::F16] {
                let cfg = PoolConfig::new(2, 3, dims(hk, hv, k, v)).with_state_dtype(sd).with_conv_dtype(cd);
                let mut km = pool_of::<KMajor>(cfg);
                let mut caps_last = Capabilities::host_reference(LayoutKind::VMajor);
                caps_last.conv_layout = ConvLayoutKind::ChannelsLast;
                let mut vm: StatePool<HostMemory, VMajor> = StatePool::new(HostMemory, cfg, &caps_last).unwrap();
                let st = random_state(&cfg, (hk * 1000 + k * 10 + v) as u64);
                let s = km.alloc(1).unwrap()[0];
                km.import(s, &st).unwrap();
                let e1 = km.export(s).unwrap();
                assert_eq!(e1, st, "k-major round trip");
                let t = vm.alloc(1).unwrap()[0];
                vm.import(t, &e1).unwrap();
                let e2 = vm.export(t).unwrap();
                assert_eq!(e2, st, "v-major round trip");
                let s2 = km.alloc(1).unwrap()[0];
                km.import(s2, &e2).unwrap();
                assert_eq!(km.export(s2).unwrap(), st, "back into k-major");
                // the V-major pool really stores [HV, V, K]: check one element by hand
                if k > 1 && v > 1 {
                    let (_, temporal) = vm.buffers();
                    let g = *vm.geometry();
                    let off = g.temporal_offset(0, t.index());
                    let es = sd.size();
                    let raw = &temporal.bytes()[off..off + g.state_bytes()];
                    // canonical (head 0, k=1, v=0) is at V-major index v*K + k = 1
                    assert_eq!(&raw[es..2 * es], &st.temporal[v * es..(v + 1) * es]);
                }
            }
        }
    }
}

#[test]
fn import_converts_dtype() {
    let cfg = PoolConfig::new(1, 2, dims(1, 2, 8, 4)).with_state_dtype(DType::BF16);
    let mut p = pool_of::<VMajor>(cfg);
    let f32cfg = PoolConfig::new(1, 2, dims(1, 2, 8, 4));
    let st = random_state(&f32cfg, 7);
    let s = p.alloc(1).unwrap()[0];
    p.import(s, &st).unwrap();
    let back = p.export(s).unwrap();
    assert_eq!(back.state_dtype, DType::BF16);
    let want: Vec<f32> = st.temporal_f32().iter().map(|&x| DType::BF16.round(x)).collect();
    assert_eq!(back.temporal_f32(), want);
    assert_eq!(back.conv_f32(), st.conv_f32());
}

#[test]
fn lifecycle_alloc_free_zero_copy_fork_bytes_descriptors() {
    let cfg = PoolConfig::new(3, 4, dims(1, 2, 8, 16)).with_speculative(3);
    let mut p = pool_of::<KMajor>(cfg);
    assert_eq!(p.capacity(), 4);
    assert_eq!(p.free_count(), 4);
    let s = p.alloc(2).unwrap();
    assert!(s.iter().all(|x| x.index() != 0 && p.is_allocated(*x)));
    assert!(!p.is_allocated(Slot::new(0, 0)));
    assert_eq!(p.free_count(), 2);
    let st = random_state(&cfg, 1);
    p.import(s[0], &st).unwrap();
    p.copy(s[0], s[1]).unwrap();
    assert_eq!(p.export(s[1]).unwrap(), st);
    let f = p.fork(s[0]).unwrap();
    assert_eq!(p.export(f).unwrap(), st);
    assert_eq!(p.free_count(), 1);
    p.zero(&[s[0]]).unwrap();
    let z = p.export(s[0]).unwrap();
    assert!(z.temporal.iter().all(|&b| b == 0) && z.conv.iter().all(|&b| b == 0));
    assert_eq!(p.export(s[1]).unwrap(), st, "zero touched another slot");
    p.free(&s).unwrap();
    assert_eq!(p.free_count(), 3);
    // slot indices are reused, under a new generation: the old handles are stale
    let again = p.alloc(3).unwrap();
    for old in [s[0], s[1]] {
        let new = again.iter().find(|a| a.index() == old.index()).expect("index reused");
        assert_eq!(new.generation(), old.generation() + 1);
        assert!(matches!(p.export(old), Err(Error::StaleSlot { .. })) && !p.is_allocated(old) && p.is_allocated(*new));
    }

    // bytes: every buffer, slot 0 included, scratch and windows D times
    let (sb, cb) = (cfg.dims.state_elems() * 4, cfg.dims.conv_elems() * 4);
    let rows = 3 * 5;
    assert_eq!(p.bytes(), rows * (sb + cb) * (1 + 3));
    assert_eq!(p.bytes(), cfg.bytes_per_slot() * 5);
    // budget sizing
    assert_eq!(cfg.slots_for_budget(cfg.bytes_per_slot() * 5), 4);
    assert_eq!(cfg.slots_for_budget(cfg.bytes_per_slot() * 5 - 1), 3);
    assert_eq!(cfg.slots_for_budget(0), 0);
    // descriptors: one per layer per buffer, contiguous per layer
    let d = p.descriptors();
    assert_eq!(d.len(), 3 * 4);
    let total: usize = d.iter().map(|x| x.bytes).sum();
    assert_eq!(total, p.bytes());
    for x in &d {
        assert_eq!(x.bytes, x.bytes_per_slot * 5);
        assert_eq!(x.device, Device::Host);
        let per = match x.kind {
            BufferKind::Conv => cb,
            BufferKind::Temporal => sb,
            BufferKind::Scratch => sb * 3,
            BufferKind::ConvWindows => cb * 3,
        };
        assert_eq!(x.bytes_per_slot, per);
    }
    let t: Vec<_> = d.iter().filter(|x| x.kind == BufferKind::Temporal).collect();
    assert_eq!(t[1].addr - t[0].addr, t[0].bytes as u64);
    // descriptors point at the bytes: slot s of layer 1 in the temporal buffer
    let g = *p.geometry();
    let (_, temporal) = p.buffers();
    assert_eq!(
        t[1].addr + (again[0].index() * sb) as u64,
        temporal.bytes().as_ptr() as u64 + g.temporal_offset(1, again[0].index()) as u64
    );
}

#[test]
fn pool_without_spec_has_two_buffers_per_layer() {
    let cfg = PoolConfig::new(2, 2, dims(1, 1, 4, 4));
    let p = pool_of::<VMajor>(cfg);
    assert_eq!(p.descriptors().len(), 4);
    assert_eq!(p.bytes(), cfg.bytes_per_slot() * 3);
}

#[test]
fn pool_construction_errors() {
    let d = dims(1, 2, 8, 8);
    let cfg = PoolConfig::new(1, 2, d);
    // layout
    let r = StatePool::<HostMemory, VMajor>::new(HostMemory, cfg, &Capabilities::host_reference(LayoutKind::KMajor));
    assert!(matches!(r, Err(Error::LayoutMismatch { expected: LayoutKind::KMajor, actual: LayoutKind::VMajor })));
    // unsupported dtypes
    let mut caps = Capabilities::host_reference(LayoutKind::KMajor);
    caps.state_dtypes = vec![DType::BF16];
    let r = StatePool::<HostMemory, KMajor>::new(HostMemory, cfg, &caps);
    assert!(matches!(r, Err(Error::UnsupportedDType { dtype: DType::F32, .. })));
    caps.state_dtypes = vec![DType::F32];
    caps.conv_dtypes = vec![DType::F32];
    let r = StatePool::<HostMemory, KMajor>::new(HostMemory, cfg.with_conv_dtype(DType::F16), &caps);
    assert!(matches!(r, Err(Error::UnsupportedDType { dtype: DType::F16, .. })));
    // f16 state is never valid
    let r = StatePool::<HostMemory, KMajor>::new(
        HostMemory,
        cfg.with_state_dtype(DType::F16),
        &Capabilities::host_reference(LayoutKind::KMajor),
    );
    assert!(matches!(r, Err(Error::InvalidConfig(_))));
    // limits
    caps.max_draft_tokens = Some(4);
    caps.limits.max_head_dim = Some(4);
    assert!(matches!(StatePool::<HostMemory, KMajor>::new(HostMemory, cfg, &caps), Err(Error::Unsupported { .. })));
    caps.limits.max_head_dim = None;
    let r = StatePool::<HostMemory, KMajor>::new(HostMemory, cfg.with_speculative(5), &caps);
    assert!(matches!(r, Err(Error::Unsupported { .. })));
    // invalid configs
    let host = Capabilities::host_reference(LayoutKind::KMajor);
    for bad in [PoolConfig::new(0, 2, d), PoolConfig::new(1, 0, d), cfg.with_speculative(0)] {
        assert!(matches!(StatePool::<HostMemory, KMajor>::new(HostMemory, bad, &host), Err(Error::InvalidConfig(_))));
    }
}

#[test]
fn slot_errors_leave_pool_unchanged() {
    let cfg = PoolConfig::new(2, 3, dims(1, 2, 8, 4)).with_speculative(2);
    let mut p = pool_of::<KMajor>(cfg);
    let s = p.alloc(2).unwrap();
    let st = random_state(&cfg, 3);
    p.import(s[0], &st).unwrap();
    p.import(s[1], &random_state(&cfg, 4)).unwrap();
    let never = Slot::new(3, 0);
    assert!(!p.is_allocated(never));

    // no slots: the one empty-batch rule
    rejects!(p, p.alloc(0), Error::EmptyBatch { what: "alloc" });
    rejects!(p, p.free(&[]), Error::EmptyBatch { what: "free" });
    rejects!(p, p.zero(&[]), Error::EmptyBatch { what: "zero" });
    // exhaustion
    rejects!(p, p.alloc(2), Error::PoolExhausted { requested: 2, available: 1 });
    // double free, slot 0, out of range, never allocated, same slot twice in one free
    rejects!(p, p.free(&[never]), Error::DoubleFree { slot: 3 });
    rejects!(p, p.free(&[Slot::new(0, 0)]), Error::PaddingSlot { index: 0 });
    rejects!(p, p.free(&[Slot::new(9, 0)]), Error::SlotOutOfRange { slot: 9, .. });
    rejects!(p, p.free(&[s[0], s[0]]), Error::DoubleFree { .. });
    // all or nothing: a good slot followed by a bad one frees neither
    rejects!(p, p.free(&[s[0], never]), Error::DoubleFree { slot: 3 });
    assert!(p.is_allocated(s[0]));
    // zero / copy / fork / export / import on bad slots
    rejects!(p, p.zero(&[s[0], never]), Error::SlotNotAllocated { index: 1, slot: 3 });
    rejects!(p, p.zero(&[Slot::new(0, 0)]), Error::PaddingSlot { .. });
    rejects!(p, p.zero(&[s[1], s[1]]), Error::DuplicateSlot { first: 0, second: 1, .. });
    rejects!(p, p.copy(s[0], s[0]), Error::DuplicateSlot { .. });
    rejects!(p, p.copy(s[0], never), Error::SlotNotAllocated { .. });
    rejects!(p, p.copy(Slot::new(0, 0), s[0]), Error::PaddingSlot { .. });
    rejects!(p, p.copy(s[0], Slot::new(100, 0)), Error::SlotOutOfRange { slot: 100, capacity: 3, .. });
    rejects!(p, p.fork(never), Error::SlotNotAllocated { .. });
    assert_eq!(p.free_count(), 1, "a failed fork must give its slot back");
    rejects!(p, p.export(never), Error::SlotNotAllocated { .. });
    rejects!(p, p.export(Slot::new(0, 0)), Error::PaddingSlot { .. });
    rejects!(p, p.import(never, &st), Error::SlotNotAllocated { .. });
    // state mismatch: other dims, other layer count, wrong byte lengths
    let other = PoolConfig::new(2, 3, dims(1, 2, 4, 8));
    rejects!(p, p.import(s[0], &random_state(&other, 5)), Error::StateMismatch(_));
    let fewer = PoolConfig::new(1, 3, cfg.dims);
    rejects!(p, p.import(s[0], &random_state(&fewer, 5)), Error::StateMismatch(_));
    let mut short = st.clone();
    short.temporal.pop();
    rejects!(p, p.import(s[0], &short), Error::StateMismatch(_));
    assert!(matches!(HostState::from_f32(1, cfg.dims, DType::F32, DType::F32, &[0.0; 3], &[0.0; 3]), Err(Error::StateMismatch(_))));
    // a state of another layout's pool imports fine (canonical order), so no error there
    assert_eq!(p.export(s[0]).unwrap(), st);
    // fork when exhausted
    let last = p.alloc(1).unwrap();
    rejects!(p, p.fork(s[0]), Error::PoolExhausted { .. });
    p.free(&last).unwrap();
}

#[test]
fn batch_errors_leave_pool_unchanged() {
    let cfg = PoolConfig::new(2, 6, dims(1, 2, 8, 4)).with_speculative(3);
    let mut p = pool_of::<VMajor>(cfg);
    let s = p.alloc(4).unwrap();
    for (i, &x) in s.iter().enumerate() {
        p.import(x, &random_state(&cfg, 10 + i as u64)).unwrap();
    }
    let never = Slot::new(6, 0);
    let (a, b) = (s[0], s[1]);

    // cu_seqlens
    // no sequences: the one empty-batch rule
    rejects!(p, ExtendBatch::new(&p, &[0], &[], &[]), Error::EmptyBatch { what: "extend" });
    rejects!(p, ExtendBatch::new(&p, &[], &[], &[]), Error::BadCuSeqlens { index: 0, .. });
    rejects!(p, ExtendBatch::new(&p, &[1, 3], &[a], &[false]), Error::BadCuSeqlens { index: 0, value: 1, .. });
    rejects!(p, ExtendBatch::new(&p, &[0, 3, 3], &[a, b], &[false, false]), Error::BadCuSeqlens { index: 2, value: 3, .. });
    rejects!(p, ExtendBatch::new(&p, &[0, 5, 2], &[a, b], &[false, false]), Error::BadCuSeqlens { index: 2, value: 2, .. });
    // lengths
    rejects!(p, ExtendBatch::new(&p, &[0, 3, 5], &[a], &[false, false]), Error::LengthMismatch { expected: 2, actual: 1, .. });
    rejects!(p, ExtendBatch::new(&p, &[0, 3, 5], &[a, b], &[false]), Error::LengthMismatch { expected: 2, actual: 1, .. });
    // slots: padding, out of range, not allocated, duplicate
    rejects!(p, ExtendBatch::new(&p, &[0, 3, 5], &[a, Slot::new(0, 0)], &[false, false]), Error::PaddingSlot { index: 1 });
    rejects!(
        p,
        ExtendBatch::new(&p, &[0, 3, 5], &[Slot::new(70, 0), a], &[false, false]),
        Error::SlotOutOfRange { index: 0, slot: 70, .. }
    );
    rejects!(p, ExtendBatch::new(&p, &[0, 3, 5], &[a, never], &[false, false]), Error::SlotNotAllocated { index: 1, slot: 6 });
    rejects!(p, ExtendBatch::new(&p, &[0, 3, 5], &[a, a], &[false, false]), Error::DuplicateSlot { first: 0, second: 1, .. });
    // snapshots: position 0, past the end, unknown sequence, slot in the batch, slot unallocated, named twice
    let eb = ExtendBatch::new(&p, &[0, 3, 5], &[a, b], &[true, false]).unwrap();
    let snap = |seq, position, slot| Snapshot { seq, position, slot };
    rejects!(p, eb.clone().with_snapshots(&p, &[snap(0, 0, s[2])]), Error::BadSnapshot { index: 0, position: 0, len: 3, .. });
    rejects!(p, eb.clone().with_snapshots(&p, &[snap(1, 3, s[2])]), Error::BadSnapshot { index: 0, seq: 1, position: 3, len: 2 });
    rejects!(p, eb.clone().with_snapshots(&p, &[snap(0, 1, s[2]), snap(2, 1, s[3])]), Error::BadSnapshot { index: 1, seq: 2, .. });
    rejects!(p, eb.clone().with_snapshots(&p, &[snap(0, 1, b)]), Error::DuplicateSlot { .. });
    rejects!(p, eb.clone().with_snapshots(&p, &[snap(0, 1, never)]), Error::SlotNotAllocated { .. });
    rejects!(p, eb.clone().with_snapshots(&p, &[snap(0, 1, s[2]), snap(1, 1, s[2])]), Error::DuplicateSlot { .. });
    let ok = eb.clone().with_snapshots(&p, &[snap(0, 3, s[2]), snap(1, 1, s[3])]).unwrap();
    assert_eq!(ok.snapshots_of(1).count(), 1);

    // decode
    rejects!(p, DecodeBatch::new(&p, &[]), Error::EmptyBatch { what: "decode" });
    rejects!(p, DecodeBatch::new(&p, &[a, a]), Error::DuplicateSlot { .. });
    rejects!(p, DecodeBatch::new(&p, &[never]), Error::SlotNotAllocated { .. });
    rejects!(p, DecodeBatch::new(&p, &[Slot::new(0, 0)]), Error::PaddingSlot { .. });
    // verify: no requests, bad parents, parents length (D is the pool's), slots
    rejects!(p, VerifyBatch::chain(&p, &[]), Error::EmptyBatch { what: "verify" });
    rejects!(p, VerifyBatch::tree(&p, &[], &[]), Error::EmptyBatch { what: "verify" });
    assert_eq!(VerifyBatch::chain(&p, &[a]).unwrap().draft(), 3);
    rejects!(p, VerifyBatch::tree(&p, &[a], &[-1, 0]), Error::LengthMismatch { .. });
    rejects!(p, VerifyBatch::tree(&p, &[a], &[-1, 0, 2]), Error::BadParent { index: 0, token: 2, parent: 2 });
    rejects!(p, VerifyBatch::tree(&p, &[a], &[0, 0, 1]), Error::BadParent { token: 0, parent: 0, .. });
    rejects!(p, VerifyBatch::tree(&p, &[a, b], &[-1, 0, 1, -1, -2, 0]), Error::BadParent { index: 1, token: 1, parent: -2 });
    rejects!(p, VerifyBatch::chain(&p, &[a, never]), Error::SlotNotAllocated { index: 1, .. });
    rejects!(p, VerifyBatch::chain(&p, &[b, b]), Error::DuplicateSlot { .. });
    let tree = VerifyBatch::tree(&p, &[a], &[-1, 0, 0]).unwrap();
    assert_eq!((tree.parent(0, 0), tree.parent(0, 2)), (None, Some(0)));
    // commit: no requests, accepted >= D, lengths, snapshot slots, a snapshot of a skipped request
    rejects!(p, CommitBatch::new(&p, &[], &[], &[]), Error::EmptyBatch { what: "commit" });
    rejects!(p, CommitBatch::new(&p, &[a, b], &[None, Some(0)], &[Some(s[2]), None]), Error::SnapshotOfSkipped { index: 0 });
    rejects!(p, CommitBatch::new(&p, &[a, b], &[Some(0), Some(3)], &[]), Error::AcceptedOutOfRange { index: 1, accepted: 3, draft: 3 });
    rejects!(p, CommitBatch::new(&p, &[a, b], &[Some(0)], &[]), Error::LengthMismatch { .. });
    rejects!(p, CommitBatch::new(&p, &[a, b], &[Some(0), Some(1)], &[None]), Error::LengthMismatch { .. });
    rejects!(p, CommitBatch::new(&p, &[a, b], &[Some(0), Some(1)], &[None, Some(a)]), Error::DuplicateSlot { .. });
    rejects!(p, CommitBatch::new(&p, &[a], &[Some(0)], &[Some(never)]), Error::SlotNotAllocated { .. });
    rejects!(p, CommitBatch::new(&p, &[Slot::new(0, 0)], &[Some(0)], &[]), Error::PaddingSlot { .. });

    // layer out of range, foreign batch, slot freed after validation: at dispatch (commit_accepted)
    let cb = CommitBatch::new(&p, &[a, b], &[Some(1), Some(2)], &[Some(s[2]), None]).unwrap();
    rejects!(p, p.commit_accepted(2, &cb), Error::LayerOutOfRange { layer: 2, layers: 2 });
    let mut other = pool_of::<VMajor>(cfg);
    let os = other.alloc(4).unwrap();
    assert_eq!(os, s, "same slot numbers, so only the pool id can tell");
    rejects!(other, other.commit_accepted(0, &cb), Error::ForeignBatch { .. });
    for batch_check in [ok.check_pool(&other).unwrap_err(), DecodeBatch::new(&p, &[a]).unwrap().check_pool(&other).unwrap_err()] {
        assert!(matches!(batch_check, Error::ForeignBatch { .. }));
    }
    p.free(&[s[2]]).unwrap();
    rejects!(p, p.commit_accepted(0, &cb), Error::SlotNotAllocated { slot, .. } if slot == s[2].index_u32());
    assert!(matches!(ok.check_pool(&p), Err(Error::SlotNotAllocated { .. })));
    // commit on a pool without speculative buffers
    let plain = pool_of::<VMajor>(PoolConfig::new(1, 2, cfg.dims));
    let ps = plain.alloc(1).unwrap();
    rejects!(plain, CommitBatch::new(&plain, &ps, &[Some(0)], &[]), Error::NoSpeculativeBuffers);
    rejects!(plain, VerifyBatch::chain(&plain, &ps), Error::NoSpeculativeBuffers);
}

#[test]
fn commit_accepted_copies_the_right_step() {
    // fill scratch step t of slot s with a recognisable pattern as a verify of layer 1 would, commit, export
    let cfg = PoolConfig::new(2, 4, dims(1, 2, 4, 3)).with_speculative(3);
    let mut p = pool_of::<VMajor>(cfg);
    let s = p.alloc(3).unwrap();
    p.zero(&s).unwrap();
    let g = *p.geometry();
    let vb = VerifyBatch::chain(&p, &[s[0]]).unwrap();
    p.kernel_parts(1, KernelAccess::Verify(&vb), |parts| {
        let scratch = parts.scratch.unwrap();
        for layer in 0..2 {
            for t in 0..3 {
                let off = g.scratch_offset(layer, s[0].index(), t);
                let vals: Vec<f32> = (0..g.config.dims.state_elems()).map(|i| (layer * 100 + t * 10) as f32 + i as f32 * 0.5).collect();
                scratch.bytes_mut()[off..off + g.state_bytes()].copy_from_slice(bytemuck::cast_slice(&vals));
            }
        }
        let windows = parts.windows.unwrap();
        for t in 0..3 {
            let off = g.window_offset(1, s[0].index(), t);
            windows.bytes_mut()[off..off + g.conv_bytes()].fill(t as u8 + 1);
        }
        Ok(())
    })
    .unwrap();
    let cb = CommitBatch::new(&p, &[s[0]], &[Some(2)], &[Some(s[2])]).unwrap();
    p.commit_accepted(1, &cb).unwrap();
    for slot in [s[0], s[2]] {
        let e = p.export(slot).unwrap();
        let t = e.temporal_f32();
        let per = g.config.dims.state_elems();
        assert!(t[..per].iter().all(|&x| x == 0.0), "layer 0 untouched");
        // layer 1, step 2, stored V-major: canonical (h, k, v) comes from V-major index
        let (kd, vd) = (4, 3);
        for h in 0..2 {
            for k in 0..kd {
                for v in 0..vd {
                    let vm_index = h * kd * vd + v * kd + k;
                    assert_eq!(t[per + h * kd * vd + k * vd + v], 120.0 + vm_index as f32 * 0.5);
                }
            }
        }
        let conv = e.conv;
        let cb = g.conv_bytes();
        assert!(conv[cb..].iter().all(|&b| b == 3), "window of step 2");
    }
    assert!(p.export(s[1]).unwrap().temporal.iter().all(|&b| b == 0));
}

#[test]
fn commit_skips_a_request_and_keeps_its_verify() {
    // Two slots with random states; random scratch for both as a verify of layer 0 would write.
    let cfg = PoolConfig::new(1, 3, dims(1, 2, 4, 3)).with_speculative(3);
    let mut p = pool_of::<KMajor>(cfg);
    let s = p.alloc(2).unwrap();
    for (i, &x) in s.iter().enumerate() {
        p.import(x, &random_state(&cfg, 30 + i as u64)).unwrap();
    }
    let g = *p.geometry();
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let mut scratch = Vec::new();
    let vb = VerifyBatch::chain(&p, &s).unwrap();
    p.kernel_parts(0, KernelAccess::Verify(&vb), |parts| {
        let (sc, wi) = (parts.scratch.unwrap(), parts.windows.unwrap());
        for b in [sc.bytes_mut(), wi.bytes_mut()] {
            let vals: Vec<f32> = (0..b.len() / 4).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            b.copy_from_slice(bytemuck::cast_slice(&vals));
        }
        scratch = sc.bytes_mut().to_vec();
        Ok(())
    })
    .unwrap();
    let step = |x: Slot, t: usize| scratch[g.scratch_offset(0, x.index(), t)..][..g.state_bytes()].to_vec();
    let main = |p: &StatePool<HostMemory, KMajor>, x: Slot| {
        let e = p.export(x).unwrap();
        (e.temporal, e.conv)
    };
    let before1 = main(&p, s[1]);

    // request 0 accepts step 1, request 1 nothing: slot 1 untouched, its verify still current
    p.commit_accepted(0, &CommitBatch::new(&p, &s, &[Some(1), None], &[]).unwrap()).unwrap();
    assert_eq!(main(&p, s[1]), before1, "a skipped request's slot changed");
    assert!(!p.has_current_verify(s[0], 0), "the commit consumed request 0's verify");
    assert!(p.has_current_verify(s[1], 0), "a skipped request's verify stays current");
    // K-major f32 pool: the exported recurrent state is the stored bytes
    assert_eq!(main(&p, s[0]).0, step(s[0], 1), "request 0 holds its step 1");
    // a second commit of request 0 needs a new verify; request 1 can still be committed
    rejects!(p, p.commit_accepted(0, &CommitBatch::new(&p, &s, &[Some(0), None], &[]).unwrap()), Error::NoCurrentVerify { index: 0, .. });
    p.commit_accepted(0, &CommitBatch::new(&p, &s, &[None, Some(2)], &[]).unwrap()).unwrap();
    assert_eq!(main(&p, s[1]).0, step(s[1], 2), "request 1 holds its step 2");
    // all skipped: a batch with requests, nothing to commit, nothing changes
    let all_skipped = CommitBatch::new(&p, &s, &[None, None], &[]).unwrap();
    let before = p.digest().unwrap();
    p.commit_accepted(0, &all_skipped).unwrap();
    assert_eq!(p.digest().unwrap(), before);
}
