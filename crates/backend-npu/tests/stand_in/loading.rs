//! Loading, SoC capabilities, the pool limits the operators impose, and
//! the per-thread device binding.

use crate::common::*;
use deltanet_backend_npu::testing::Recorder;
use deltanet_backend_npu::{NpuDispatcher, SocFamily};
use deltanet_core::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

#[test]
fn new_without_cann_is_a_typed_unavailable_error() {
    if deltanet_backend_npu::Cann::load().is_ok() {
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
    let p = deltanet_backend_npu::probe().unwrap_err();
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
    assert_eq!(caps.limits.max_head_dim, Some(128));
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
fn replay_mode_is_refused_with_a_typed_error_and_nothing_allocated() {
    let (rec, a2) = setup(A2);
    assert_eq!(a2.capabilities().spec_modes, [SpecMode::Scratch]);
    let base = PoolConfig::new(2, 4, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16).with_speculative(4);
    assert!(a2.new_pool(base).is_ok());
    match a2.new_pool(base.with_spec_mode(SpecMode::Replay)) {
        Err(Error::Unsupported { backend, reason }) => {
            assert_eq!(backend, "npu");
            assert!(reason.contains("replay"), "{reason}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(rec.live_allocs(), 0);
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
