//! The gate as elementwise operators.

use crate::common::*;
use deltanet_backend_npu::api::{AclDType, OpCall, UnaryOp};
use deltanet_core::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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
    assert_eq!(names, ["aclnnAdd", "aclnnSoftplus", "aclnnExp", "aclnnMul", "aclnnNeg", "aclnnCast", "aclnnSigmoid"]);
    // bf16 `a` + f32 `dt_bias`, promoted to an f32 output: no cast of `a`.
    assert_eq!(expect_t(&calls[0], "self_", AclDType::BF16, &[t, hv]).addr, a.addr());
    assert_eq!(expect_t(&calls[0], "other", AclDType::F32, &[hv]).addr, dt.addr());
    expect_t(&calls[0], "out", AclDType::F32, &[t, hv]);
    assert_eq!(calls[0].scalars, vec![1.0]);
    assert_eq!(calls[1].scalars, vec![1.0, 20.0], "softplus beta 1, threshold 20");
    assert_eq!(expect_t(&calls[2], "self_", AclDType::F32, &[hv]).addr, al.addr());
    assert!(matches!(calls[4].call, OpCall::Unary { op: UnaryOp::Neg, .. }));
    assert_eq!(expect_t(&calls[4], "out", AclDType::F32, &[t, hv]).addr, ga);
    assert_eq!(calls[5].t("self_").addr, b.addr());
    assert_eq!(expect_t(&calls[6], "out", AclDType::F32, &[t, hv]).addr, ba);
    assert_eq!(rec.live_tensors(), 0);
}
