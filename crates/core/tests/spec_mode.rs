//! Speculative modes chosen when the pool is made: what each mode allocates
//! (and `bytes()` reports), the builder and parser, and the refusal of a mode
//! the backend's capabilities do not list, with nothing allocated.

use deltanet_core::*;

fn qwen35_35b() -> ModelDims {
    ModelDims::new(16, 32, 128, 128, 4).unwrap()
}

fn caps(modes: &[SpecMode]) -> Capabilities {
    Capabilities::host_reference(LayoutKind::KMajor).with_spec_modes(modes)
}

fn pool(cfg: PoolConfig) -> Result<StatePool<HostMemory, KMajor>> {
    StatePool::new(HostMemory, cfg, &caps(&SpecMode::ALL))
}

#[test]
fn builder_and_positional_set_the_mode_in_either_order() {
    let d = qwen35_35b();
    let a = PoolConfig::builder(d).layers(2).slots(3).spec_mode(SpecMode::Replay).speculative(4).build().unwrap();
    let b = PoolConfig::builder(d).layers(2).slots(3).speculative(4).spec_mode(SpecMode::Replay).build().unwrap();
    let c = PoolConfig::new(2, 3, d).with_speculative(4).with_spec_mode(SpecMode::Replay);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.spec, Some(SpecConfig { draft_tokens: 4, mode: SpecMode::Replay }));
    assert_eq!(PoolConfig::new(2, 3, d).with_speculative(4).spec_mode(), Some(SpecMode::Scratch));
    // a mode without draft tokens is a speculative pool of 0 drafts: refused
    assert!(matches!(PoolConfig::new(2, 3, d).with_spec_mode(SpecMode::Replay).validate(), Err(Error::InvalidConfig(_))));
    assert_eq!("replay".parse::<SpecMode>().unwrap(), SpecMode::Replay);
    assert_eq!("scratch".parse::<SpecMode>().unwrap(), SpecMode::Scratch);
    assert!(matches!("tree".parse::<SpecMode>(), Err(Error::InvalidConfig(_))));
}

#[test]
fn each_mode_allocates_what_it_needs_and_bytes_reports_it() {
    let d = qwen35_35b();
    let (layers, slots, draft) = (3, 2, 4);
    let base = PoolConfig::new(layers, slots, d).with_speculative(draft);
    let rows = slots + 1;
    let main = layers * rows * (d.state_elems() * 4 + d.conv_elems() * 4);
    // scratch: D states and D conv windows per slot and layer
    let scratch = pool(base).unwrap();
    let want_scratch = layers * rows * draft * (d.state_elems() * 4 + d.conv_elems() * 4);
    assert_eq!(scratch.bytes(), main + want_scratch);
    // replay: per draft its raw conv input [conv_dim] and per value head k, v, g, beta (f32)
    let replay = pool(base.with_spec_mode(SpecMode::Replay)).unwrap();
    let record = d.num_v_heads * (d.head_k_dim + d.head_v_dim + 2) * 4;
    let want_replay = layers * rows * draft * (record + d.conv_dim() * 4);
    assert_eq!(replay.bytes(), main + want_replay);
    assert_eq!(base.with_spec_mode(SpecMode::Replay).spec_bytes_per_slot(), layers * draft * (record + d.conv_dim() * 4));
    // the target: replay's speculative memory per request <= 1/20 of scratch's
    let ratio = base.with_spec_mode(SpecMode::Replay).spec_bytes_per_slot() as f64 / base.spec_bytes_per_slot() as f64;
    assert!(ratio <= 1.0 / 20.0, "{ratio}");
    // descriptors describe the same bytes
    let described: usize = replay.descriptors().iter().map(|x| x.bytes).sum();
    assert_eq!(described, replay.bytes());
    // bytes_per_slot follows the mode (budget sizing)
    assert_eq!(base.with_spec_mode(SpecMode::Replay).bytes_per_slot() * rows, replay.bytes());
}

#[test]
fn a_mode_the_backend_does_not_list_is_refused() {
    let d = ModelDims::new(1, 2, 8, 8, 4).unwrap();
    let cfg = PoolConfig::new(1, 2, d).with_speculative(2).with_spec_mode(SpecMode::Replay);
    let r = StatePool::<HostMemory, KMajor>::new(HostMemory, cfg, &caps(&[SpecMode::Scratch]));
    match r {
        Err(Error::Unsupported { reason, .. }) => assert!(reason.contains("replay"), "{reason}"),
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    // the default capabilities list scratch only
    assert_eq!(Capabilities::host_reference(LayoutKind::VMajor).spec_modes, [SpecMode::Scratch]);
}

#[test]
fn the_pool_level_scratch_copy_refuses_a_replay_pool() {
    let d = ModelDims::new(1, 2, 8, 8, 4).unwrap();
    let mut p = pool(PoolConfig::new(1, 2, d).with_speculative(2).with_spec_mode(SpecMode::Replay)).unwrap();
    let s = p.alloc(1).unwrap();
    let cb = CommitBatch::new(&p, &s, &[Some(1)], &[]).unwrap();
    // no verify yet: the currency rule comes first, in both modes
    assert!(matches!(p.commit_accepted(0, &cb), Err(Error::NoCurrentVerify { .. })));
    // a verify made current by a tool (a kernel that wrote nothing) does not let the copy run
    let vb = VerifyBatch::chain(&p, &s).unwrap();
    p.kernel_parts(0, KernelAccess::Verify(&vb), |_| Ok(())).unwrap();
    let before = p.digest().unwrap();
    assert!(matches!(p.commit_accepted(0, &cb), Err(Error::Unsupported { .. })));
    assert_eq!(p.digest().unwrap(), before);
}
