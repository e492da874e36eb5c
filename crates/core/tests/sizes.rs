//! Issue 10 items 3 and 4 at the public API: sizes that overflow are
//! `InvalidConfig` naming the field, pools larger than memory are
//! `OutOfMemory` with the bytes asked (never an abort), and no pool of
//! 0-byte buffers is ever made.

use deltanet_core::*;

fn caps() -> Capabilities {
    Capabilities::host_reference(LayoutKind::KMajor)
}

fn pool(cfg: PoolConfig) -> Result<StatePool<HostMemory, KMajor>> {
    StatePool::new(HostMemory, cfg, &caps())
}

#[test]
fn overflowing_sizes_are_invalid_config_naming_the_field() {
    let Err(Error::InvalidConfig(m)) = ModelDims::new(1, 1, 1 << 32, 1 << 32, 4) else { panic!("K = V = 2^32 accepted") };
    assert!(m.contains("state_elems"), "{m}");
    let dims = ModelDims::new(1, 2, 8, 8, 4).unwrap();
    for cfg in [PoolConfig::new(1 << 54, 8, dims), PoolConfig::new(1, 1 << 40, dims).with_speculative(1 << 30)] {
        match pool(cfg) {
            Err(Error::InvalidConfig(m)) => assert!(m.contains("buffer") || m.contains("slots") || m.contains("layers"), "{m}"),
            other => panic!("{cfg:?}: {:?}", other.map(|p| p.bytes())),
        }
    }
}

#[test]
fn pools_larger_than_memory_are_out_of_memory() {
    // Every buffer, the first (conv) included, beyond a 47-bit address space, so the
    // allocator refuses it whatever the overcommit policy (a granted buffer is faulted in).
    let dims = ModelDims::new(2, 4, 1024, 1024, 4).unwrap();
    let cfg = PoolConfig::new(2, 1 << 31, dims);
    assert!(cfg.buffer_bytes().unwrap().conv > 1 << 47);
    match pool(cfg) {
        Err(Error::OutOfMemory { bytes }) => assert!(bytes >= 1 << 40, "{bytes}"),
        Err(Error::InvalidConfig(m)) => panic!("a representable size refused as invalid: {m}"),
        other => panic!("{:?}", other.map(|p| p.bytes())),
    }
    // u32::MAX - 1 slots of these dims: conv alone is 2^32 x 96 KiB, refused
    assert!(matches!(pool(PoolConfig::new(1, u32::MAX as usize - 1, dims)), Err(Error::InvalidConfig(_) | Error::OutOfMemory { .. })));
}

#[test]
fn every_pool_made_has_the_bytes_its_config_says() {
    let dims = ModelDims::new(1, 2, 5, 3, 4).unwrap();
    let cfg = PoolConfig::new(3, 7, dims).with_speculative(2);
    let p = pool(cfg).unwrap();
    let b = cfg.buffer_bytes().unwrap();
    assert!(b.temporal > 0 && b.conv > 0 && b.scratch > 0 && b.windows > 0);
    assert_eq!(p.bytes(), b.temporal + b.conv + b.scratch + b.windows);
}
