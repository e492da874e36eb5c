//! The first phase of every operator (`aclnnXxxGetWorkspaceSize`): an
//! [`OpCall`] read back argument by argument ([`FfiArgs`]) and passed to the
//! symbol through the fn-pointer type of its signature in the bindings.
//! Parameter `i` is always `args()[i]`, the order the contract tests check
//! against the bindings' parameter lists.

use crate::ops::{Arg, OpCall};
use crate::result::AclError;
use crate::sys::bindings as b;

/// [`OpCall::args`] read back as FFI values, parameter by parameter.
struct FfiArgs {
    op: &'static str,
    args: Vec<(&'static str, Arg)>,
}

impl FfiArgs {
    fn get(&self, i: usize, kind: &'static str) -> Result<Arg, AclError> {
        self.args.get(i).map(|(_, a)| *a).ok_or_else(|| self.wrong(i, kind))
    }
    fn wrong(&self, i: usize, kind: &'static str) -> AclError {
        AclError::Marshal { op: self.op.into(), index: i, expected: kind }
    }
    /// `const aclTensor *` / `aclTensor *` (null for an omitted optional).
    fn t(&self, i: usize) -> Result<*mut b::aclTensor, AclError> {
        match self.get(i, "tensor")? {
            Arg::Tensor(h) => Ok(h.map_or(std::ptr::null_mut(), |h| h.0 as *mut b::aclTensor)),
            _ => Err(self.wrong(i, "tensor")),
        }
    }
    fn scalar(&self, i: usize) -> Result<*const b::aclScalar, AclError> {
        match self.get(i, "scalar")? {
            Arg::Scalar(h) => Ok(h.0 as *const b::aclScalar),
            _ => Err(self.wrong(i, "scalar")),
        }
    }
    fn f32(&self, i: usize) -> Result<f32, AclError> {
        match self.get(i, "f32")? {
            Arg::F32(v) => Ok(v),
            _ => Err(self.wrong(i, "f32")),
        }
    }
    fn f64(&self, i: usize) -> Result<f64, AclError> {
        match self.get(i, "f64")? {
            Arg::F64(v) => Ok(v),
            _ => Err(self.wrong(i, "f64")),
        }
    }
    fn i64(&self, i: usize) -> Result<i64, AclError> {
        match self.get(i, "i64")? {
            Arg::I64(v) => Ok(v),
            _ => Err(self.wrong(i, "i64")),
        }
    }
    fn dtype(&self, i: usize) -> Result<b::aclDataType, AclError> {
        match self.get(i, "aclDataType")? {
            Arg::DType(d) => Ok(d.raw()),
            _ => Err(self.wrong(i, "aclDataType")),
        }
    }
    fn str(&self, i: usize) -> Result<*const std::ffi::c_char, AclError> {
        match self.get(i, "string")? {
            Arg::Str(s) => Ok(s.as_ptr()),
            _ => Err(self.wrong(i, "string")),
        }
    }
}

/// Calls the first phase of `call` at `addr` and returns its status.
///
/// # Safety
/// `addr` is the `aclnnXxxGetWorkspaceSize` symbol of `call`'s operator;
/// every handle in `call` is live for the call.
pub(super) unsafe fn get_workspace_size(
    addr: usize,
    call: &OpCall,
    ws: &mut u64,
    ex: &mut *mut b::aclOpExecutor,
) -> Result<b::aclnnStatus, AclError> {
    let a = FfiArgs { op: call.name(), args: call.args() };
    // SAFETY (every arm): per this function's contract, `addr` is the
    // operator's phase-one symbol, called through the fn-pointer type of its
    // documented signature; every handle outlives the call; the outputs are
    // written through valid pointers.
    let code = unsafe {
        match call {
            OpCall::ChunkGatedDeltaRule { .. } => {
                let f: b::aclnnChunkGatedDeltaRuleGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(a.t(0)?, a.t(1)?, a.t(2)?, a.t(3)?, a.t(4)?, a.t(5)?, a.t(6)?, a.f32(7)?, a.t(8)?, a.t(9)?, ws, ex)
            }
            OpCall::RecurrentGatedDeltaRule { .. } => {
                let f: b::aclnnRecurrentGatedDeltaRuleGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(a.t(0)?, a.t(1)?, a.t(2)?, a.t(3)?, a.t(4)?, a.t(5)?, a.t(6)?, a.t(7)?, a.t(8)?, a.t(9)?, a.f32(10)?, a.t(11)?, ws, ex)
            }
            OpCall::CausalConv1dFn { .. } => {
                let f: b::aclnnCausalConv1dFnGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(
                    a.t(0)?,
                    a.t(1)?,
                    a.t(2)?,
                    a.t(3)?,
                    a.t(4)?,
                    a.t(5)?,
                    a.t(6)?,
                    a.t(7)?,
                    a.t(8)?,
                    a.t(9)?,
                    a.t(10)?,
                    a.str(11)?,
                    a.i64(12)?,
                    a.i64(13)?,
                    a.t(14)?,
                    ws,
                    ex,
                )
            }
            OpCall::CausalConv1dUpdate { .. } => {
                let f: b::aclnnCausalConv1dUpdateGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(
                    a.t(0)?,
                    a.t(1)?,
                    a.t(2)?,
                    a.t(3)?,
                    a.t(4)?,
                    a.t(5)?,
                    a.t(6)?,
                    a.t(7)?,
                    a.t(8)?,
                    a.str(9)?,
                    a.i64(10)?,
                    a.i64(11)?,
                    a.t(12)?,
                    ws,
                    ex,
                )
            }
            OpCall::Unary { .. } => {
                let f: b::aclnnUnaryGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(a.t(0)?, a.t(1)?, ws, ex)
            }
            OpCall::Mul { .. } => {
                let f: b::aclnnBinaryGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(a.t(0)?, a.t(1)?, a.t(2)?, ws, ex)
            }
            OpCall::Add { .. } => {
                let f: b::aclnnAddGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(a.t(0)?, a.t(1)?, a.scalar(2)?, a.t(3)?, ws, ex)
            }
            OpCall::Softplus { .. } => {
                let f: b::aclnnSoftplusGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(a.t(0)?, a.scalar(1)?, a.scalar(2)?, a.t(3)?, ws, ex)
            }
            OpCall::Cast { .. } => {
                let f: b::aclnnCastGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(a.t(0)?, a.dtype(1)?, a.t(2)?, ws, ex)
            }
            OpCall::RmsNorm { .. } => {
                let f: b::aclnnRmsNormGetWorkspaceSizeFn = std::mem::transmute(addr);
                f(a.t(0)?, a.t(1)?, a.f64(2)?, a.t(3)?, a.t(4)?, ws, ex)
            }
        }
    };
    Ok(code)
}
