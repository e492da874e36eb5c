//! `PoolConfig::builder`: each named setter sets its own field, and `build`
//! refuses what `PoolConfig::validate` refuses or a setter left out.

use deltanet_core::{DType, Error, ModelDims, PoolConfig, SpecConfig, SpecMode};

fn dims() -> ModelDims {
    ModelDims::builder().key_heads(1).value_heads(2).head_k_dim(4).head_v_dim(3).conv_width(4).build().unwrap()
}

#[test]
fn every_setter_sets_its_field() {
    let c = PoolConfig::builder(dims())
        .layers(3)
        .slots(7)
        .state_dtype(DType::BF16)
        .conv_dtype(DType::F16)
        .speculative(5)
        .finite_check(true)
        .build()
        .unwrap();
    assert_eq!((c.layers, c.slots, c.dims), (3, 7, dims()));
    assert_eq!(
        (c.state_dtype, c.conv_dtype, c.spec, c.check_finite),
        (DType::BF16, DType::F16, Some(SpecConfig { draft_tokens: 5, mode: SpecMode::Scratch }), true)
    );
    let positional = PoolConfig::new(3, 7, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::F16).with_speculative(5);
    assert_eq!(c, positional.with_finite_check());
}

#[test]
fn defaults_match_the_positional_shorthand() {
    assert_eq!(PoolConfig::builder(dims()).layers(2).slots(9).build().unwrap(), PoolConfig::new(2, 9, dims()));
}

#[test]
fn missing_or_invalid_settings_are_refused() {
    for (b, missing) in [(PoolConfig::builder(dims()).slots(4), "layers"), (PoolConfig::builder(dims()).layers(4), "slots")] {
        let Err(Error::InvalidConfig(m)) = b.build() else { panic!("accepted without {missing}") };
        assert!(m.contains(missing), "{m}");
    }
    let ok = PoolConfig::builder(dims()).layers(2).slots(4);
    assert!(matches!(ok.slots(0).build(), Err(Error::InvalidConfig(_))));
    assert!(matches!(ok.speculative(0).build(), Err(Error::InvalidConfig(_))));
    assert!(matches!(ok.state_dtype(DType::F16).build(), Err(Error::InvalidConfig(_))));
}
