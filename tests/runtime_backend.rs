//! The runtime backend API: names, typed errors, and the layout check that
//! the typed API does at compile time.

use deltanet::{Backend, Error};

#[test]
fn names_parse_and_unknown_ones_are_errors() {
    assert!(matches!(Backend::from_name("cuda:x"), Err(Error::InvalidConfig(_))));
    assert!(matches!(Backend::from_name("gpu"), Err(Error::InvalidConfig(_))));
    // compiled out or unavailable: a typed error either way, never a panic
    for name in ["cuda:0", "npu:0"] {
        match Backend::from_name(name) {
            Ok(_) => {}
            Err(Error::NotCompiled { .. }) | Err(Error::Unavailable { .. }) => {}
            Err(e) => panic!("{name}: unexpected {e}"),
        }
    }
}

#[cfg(feature = "cpu")]
#[test]
fn a_pool_of_the_other_layout_is_layout_mismatch_and_untouched() {
    use deltanet::{DeltaIo, DeltaParams, ExtendBatch, LayoutKind, ModelDims, PoolConfig, TensorMut, TensorRef};
    let dims = ModelDims::new(1, 2, 8, 8, 4).unwrap();
    let (kb, vb) = (Backend::cpu().unwrap(), Backend::cpu_vmajor().unwrap());
    assert_eq!((kb.layout(), vb.layout()), (LayoutKind::KMajor, LayoutKind::VMajor));
    let mut vpool = vb.new_pool(PoolConfig::new(1, 2, dims)).unwrap();
    let slots = vpool.as_dyn().alloc(1).unwrap();
    let before = vpool.as_dyn().digest().unwrap();
    let batch = ExtendBatch::new(vpool.as_dyn(), &[0, 3], &slots, &[false]).unwrap();
    let (q, v, g) = (vec![0.5f32; 3 * 8], vec![0.25f32; 3 * 2 * 8], vec![-0.1f32; 6]);
    let mut o = vec![0f32; 3 * 2 * 8];
    let io = DeltaIo {
        q: TensorRef::from_slice(&q, &[3, 1, 8]).unwrap(),
        k: TensorRef::from_slice(&q, &[3, 1, 8]).unwrap(),
        v: TensorRef::from_slice(&v, &[3, 2, 8]).unwrap(),
        g: TensorRef::from_slice(&g, &[3, 2]).unwrap(),
        beta: TensorRef::from_slice(&g, &[3, 2]).unwrap(),
        o: TensorMut::from_slice(&mut o, &[3, 2, 8]).unwrap(),
        params: DeltaParams::new(&dims),
    };
    let e = kb.extend(&mut vpool, 0, &batch, io).unwrap_err();
    assert_eq!(e, Error::LayoutMismatch { expected: LayoutKind::KMajor, actual: LayoutKind::VMajor });
    assert_eq!(vpool.as_dyn().digest().unwrap(), before);
    // the right backend accepts it
    let io = DeltaIo {
        q: TensorRef::from_slice(&q, &[3, 1, 8]).unwrap(),
        k: TensorRef::from_slice(&q, &[3, 1, 8]).unwrap(),
        v: TensorRef::from_slice(&v, &[3, 2, 8]).unwrap(),
        g: TensorRef::from_slice(&g, &[3, 2]).unwrap(),
        beta: TensorRef::from_slice(&g, &[3, 2]).unwrap(),
        o: TensorMut::from_slice(&mut o, &[3, 2, 8]).unwrap(),
        params: DeltaParams::new(&dims),
    };
    vb.extend(&mut vpool, 0, &batch, io).unwrap();
    assert_ne!(vpool.as_dyn().digest().unwrap(), before);
}

#[test]
fn cpu_with_a_device_index_is_refused() {
    for name in ["cpu:7", "cpu:0", "cpu-vk:1", "cpu-vmajor:0"] {
        let r = Backend::from_name(name);
        assert!(matches!(&r, Err(Error::InvalidConfig(m)) if m.contains("no device index")), "{name}: {:?}", r.err());
    }
}

#[test]
fn layout_mismatch_names_the_layouts() {
    use deltanet::LayoutKind;
    let m = Error::LayoutMismatch { expected: LayoutKind::VMajor, actual: LayoutKind::KMajor }.to_string();
    assert_eq!(m, "layout mismatch: the kernel needs a v-major pool, got a k-major pool");
}

/// A CPU v-major pool handed to the CUDA backend's operations: same layout,
/// another backend. The message names both backends, not "host, got host".
/// (Without `cuda` the disabled CUDA variant shares the CPU pool's type.)
#[cfg(all(feature = "cpu", feature = "cuda"))]
#[test]
fn a_pool_of_another_backend_with_the_same_layout_names_both() {
    use deltanet::backend::CudaDispatcher;
    use deltanet::{ModelDims, PoolConfig};
    let mut vpool = Backend::cpu_vmajor().unwrap().new_pool(PoolConfig::new(1, 2, ModelDims::new(1, 2, 8, 8, 4).unwrap())).unwrap();
    let before = vpool.as_dyn().digest().unwrap();
    let e = vpool.typed_mut::<CudaDispatcher>().map(|_| ()).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, Error::Unsupported { ref backend, .. } if backend == "cuda"), "{m}");
    assert!(m.contains("`cpu-vk`") && m.contains("v-major") && !m.contains("got host"), "{m}");
    assert_eq!(vpool.as_dyn().digest().unwrap(), before);
}
