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
