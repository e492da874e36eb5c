//! The parts of a layer the GDN operators do not do, as aclnn operators: the
//! gate (elementwise), the q/k L2 norm (`aclnnRmsNorm`, f32 inside, bf16 out)
//! and the cast of beta to the bf16 the GDN operators take. Each
//! temporary is a [`DeviceBuffer`] of the stream's scratch, which queued
//! operators may still use after it is dropped: only work queued later reuses it.

use crate::api::{AclDType, OpCall, UnaryOp};
use crate::norm_gamma::NormGammas;
use crate::safe::{DeviceBuffer, NpuContext};
use crate::view::View;
use deltanet_core::{DType, DeltaIo, Result, L2NORM_EPS};

/// A contiguous temporary and its view.
pub(crate) fn temp(ctx: &NpuContext, dtype: AclDType, shape: &[usize]) -> Result<(DeviceBuffer, View)> {
    let buf = ctx.scratch(shape.iter().product::<usize>() * dtype.size())?;
    let v = View::contiguous(&buf, dtype, shape);
    Ok((buf, v))
}

/// `aclnnCast` of `input` into `out`'s dtype.
pub(crate) fn cast(ctx: &NpuContext, input: &View, out: &View) -> Result<()> {
    let (i, o) = (ctx.tensor(&input.desc())?, ctx.tensor(&out.desc())?);
    Ok(ctx.run(&OpCall::Cast { input: i.h(), dtype: out.dtype, out: o.h() })?)
}

/// A `(self, out)` operator.
pub(crate) fn unary(ctx: &NpuContext, op: UnaryOp, input: &View, out: &View) -> Result<()> {
    let (i, o) = (ctx.tensor(&input.desc())?, ctx.tensor(&out.desc())?);
    Ok(ctx.run(&OpCall::Unary { op, input: i.h(), out: o.h() })?)
}

/// `aclnnMul` (broadcasting).
pub(crate) fn mul(ctx: &NpuContext, a: &View, b: &View, out: &View) -> Result<()> {
    let (ta, tb, to) = (ctx.tensor(&a.desc())?, ctx.tensor(&b.desc())?, ctx.tensor(&out.desc())?);
    Ok(ctx.run(&OpCall::Mul { a: ta.h(), b: tb.h(), out: to.h() })?)
}

/// `x / sqrt(sum(x^2) + 1e-6)` over the last dim, in f32, written as `[T, H, K]`
/// in `x`'s dtype (the bf16 the GDN operators take): one `aclnnRmsNorm` call
/// with `gamma` from [`NormGammas`] (the identity is in `norm_gamma.rs`).
///
/// One call per tensor is the fewest the library allows for one tensor (it
/// was 7: cast, square, sum, add eps, rsqrt, scale, cast). q and k of the
/// layer forward are adjacent in the conv output, so one call could cover
/// both, but its output would have to be a non-contiguous view (the chunk
/// operator takes contiguous q and k), which the RmsNorm docs do not promise.
pub(crate) fn l2norm(ctx: &NpuContext, gammas: &NormGammas, x: &View, dtype: DType) -> Result<(DeviceBuffer, View)> {
    let (t, h, k) = (x.shape[0], x.shape[1], x.shape[2]);
    let gamma = gammas.get(ctx, k, dtype)?;
    let (out_buf, out) = temp(ctx, x.dtype, &[t, h, k])?;
    let (_rstd_buf, rstd) = temp(ctx, AclDType::F32, &[t, h, 1])?;
    let (tx, tg, ty, tr) = (ctx.tensor(&x.desc())?, ctx.tensor(&gamma.desc())?, ctx.tensor(&out.desc())?, ctx.tensor(&rstd.desc())?);
    let epsilon = L2NORM_EPS as f64 / k as f64;
    ctx.run(&OpCall::RmsNorm { x: tx.h(), gamma: tg.h(), epsilon, y: ty.h(), rstd: tr.h() })?;
    Ok((out_buf, out))
}

/// q, k (L2-normalised when asked) and beta as bf16, plus the buffers that back them.
pub(crate) fn delta_inputs(ctx: &NpuContext, gammas: &NormGammas, io: &DeltaIo<'_>) -> Result<(Vec<DeviceBuffer>, View, View, View)> {
    let mut keep = Vec::new();
    let mut q = View::of(io.q.addr(), io.q.meta());
    let mut k = View::of(io.k.addr(), io.k.meta());
    if io.params.use_qk_l2norm {
        let (qb, qv) = l2norm(ctx, gammas, &q, io.q.meta().dtype())?;
        let (kb, kv) = l2norm(ctx, gammas, &k, io.k.meta().dtype())?;
        keep.push(qb);
        keep.push(kb);
        q = qv;
        k = kv;
    }
    let mut beta = View::of(io.beta.addr(), io.beta.meta());
    if beta.dtype != AclDType::BF16 {
        let (bb, bv) = temp(ctx, AclDType::BF16, &beta.shape)?;
        cast(ctx, &beta, &bv)?;
        keep.push(bb);
        beta = bv;
    }
    Ok((keep, q, k, beta))
}

/// The gate inputs and outputs (`a`, `b`: `[T, HV]`; `a_log`, `dt_bias`: `[HV]`; `g`, `beta`: `[T, HV]` f32).
pub(crate) struct GateViews {
    pub(crate) a: View,
    pub(crate) b: View,
    pub(crate) a_log: View,
    pub(crate) dt_bias: View,
    pub(crate) g: View,
    pub(crate) beta: View,
}

/// `g = -exp(A_log) * softplus(a + dt_bias)` and `beta = sigmoid(b)`, in f32.
///
/// Seven operator calls (it was eight): `aclnnAdd` promotes the bf16 `a`
/// against the f32 `dt_bias` into an f32 output, so `a` needs no cast. That
/// is the fewest the library allows with softplus's threshold-20 semantics:
/// softplus, exp and the product are three operators with no fused aclnn
/// form, the sign is a fourth (`aclnnMul` has no scale), and `aclnnSigmoid`
/// writes its input's dtype, so the bf16 `b` is cast to f32 first.
pub(crate) fn gate(ctx: &NpuContext, v: &GateViews) -> Result<()> {
    let (t, hv) = (v.a.shape[0], v.a.shape[1]);
    let (_af_b, af) = temp(ctx, AclDType::F32, &[t, hv])?;
    let (_sp_b, sp) = temp(ctx, AclDType::F32, &[t, hv])?;
    let (_ea_b, ea) = temp(ctx, AclDType::F32, &[hv])?;
    {
        let (ta, tb, to) = (ctx.tensor(&v.a.desc())?, ctx.tensor(&v.dt_bias.desc())?, ctx.tensor(&sp.desc())?);
        let one = ctx.scalar(1.0)?;
        ctx.run(&OpCall::Add { a: ta.h(), b: tb.h(), alpha: one.h(), out: to.h() })?;
    }
    {
        let (ti, to) = (ctx.tensor(&sp.desc())?, ctx.tensor(&af.desc())?);
        let (one, twenty) = (ctx.scalar(1.0)?, ctx.scalar(20.0)?);
        ctx.run(&OpCall::Softplus { input: ti.h(), beta: one.h(), threshold: twenty.h(), out: to.h() })?;
    }
    unary(ctx, UnaryOp::Exp, &v.a_log, &ea)?;
    mul(ctx, &af, &ea, &sp)?;
    unary(ctx, UnaryOp::Neg, &sp, &v.g)?;
    cast(ctx, &v.b, &af)?;
    // The temporaries return to the stream's scratch, reused only by work queued after this: no drain.
    unary(ctx, UnaryOp::Sigmoid, &af, &v.beta)
}
