//! The parts of a layer the GDN operators do not do, as chains of aclnn
//! elementwise operators: the gate, the q/k L2 norm (f32 throughout, bf16
//! out) and the casts of q/k/beta to the bf16 the GDN operators take. Each
//! temporary is a [`DeviceBuffer`] of the stream's scratch, which queued
//! operators may still use after it is dropped: only work queued later reuses it.

use crate::api::{AclDType, OpCall, UnaryOp};
use crate::safe::{DeviceBuffer, NpuContext};
use crate::view::View;
use deltanet_core::{DeltaIo, Result, L2NORM_EPS};

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

/// `x / sqrt(sum(x^2) + 1e-6)` over the last dim, in f32, written as bf16 `[T, H, K]`.
pub(crate) fn l2norm(ctx: &NpuContext, x: &View) -> Result<(DeviceBuffer, View)> {
    let (t, h, k) = (x.shape[0], x.shape[1], x.shape[2]);
    let (_xf_buf, xf) = temp(ctx, AclDType::F32, &[t, h, k])?;
    let (_sq_buf, sq) = temp(ctx, AclDType::F32, &[t, h, k])?;
    let (_ss_buf, ss) = temp(ctx, AclDType::F32, &[t, h, 1])?;
    let (_rs_buf, rs) = temp(ctx, AclDType::F32, &[t, h, 1])?;
    let (out_buf, out) = temp(ctx, AclDType::BF16, &[t, h, k])?;
    cast(ctx, x, &xf)?;
    mul(ctx, &xf, &xf, &sq)?;
    {
        let (ti, to) = (ctx.tensor(&sq.desc())?, ctx.tensor(&ss.desc())?);
        let dims = ctx.int_array(&[2])?;
        ctx.run(&OpCall::ReduceSum { input: ti.h(), dims: dims.h(), keep_dim: true, dtype: AclDType::F32, out: to.h() })?;
    }
    {
        let (ti, to) = (ctx.tensor(&ss.desc())?, ctx.tensor(&rs.desc())?);
        let (eps, one) = (ctx.scalar(L2NORM_EPS)?, ctx.scalar(1.0)?);
        ctx.run(&OpCall::Adds { input: ti.h(), other: eps.h(), alpha: one.h(), out: to.h() })?;
    }
    unary(ctx, UnaryOp::Rsqrt, &rs, &ss)?;
    mul(ctx, &xf, &ss, &sq)?;
    cast(ctx, &sq, &out)?;
    Ok((out_buf, out))
}

/// q, k (L2-normalised when asked) and beta as bf16, plus the buffers that back them.
pub(crate) fn delta_inputs(ctx: &NpuContext, io: &DeltaIo<'_>) -> Result<(Vec<DeviceBuffer>, View, View, View)> {
    let mut keep = Vec::new();
    let mut q = View::of(io.q.addr(), io.q.meta());
    let mut k = View::of(io.k.addr(), io.k.meta());
    if io.params.use_qk_l2norm {
        let (qb, qv) = l2norm(ctx, &q)?;
        let (kb, kv) = l2norm(ctx, &k)?;
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
pub(crate) fn gate(ctx: &NpuContext, v: &GateViews) -> Result<()> {
    let (t, hv) = (v.a.shape[0], v.a.shape[1]);
    let (_af_b, af) = temp(ctx, AclDType::F32, &[t, hv])?;
    let (_sp_b, sp) = temp(ctx, AclDType::F32, &[t, hv])?;
    let (_ea_b, ea) = temp(ctx, AclDType::F32, &[hv])?;
    cast(ctx, &v.a, &af)?;
    {
        let (ta, tb, to) = (ctx.tensor(&af.desc())?, ctx.tensor(&v.dt_bias.desc())?, ctx.tensor(&sp.desc())?);
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
