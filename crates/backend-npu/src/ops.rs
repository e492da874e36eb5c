//! The ACL/aclnn function table as a trait, so the marshalling layer runs
//! against the real libraries ([`Cann`]) or a stand-in (the tests' recorder).
//!
//! Handles are plain integers (the native pointers' addresses) so the trait is
//! object-safe and `Send + Sync`; only [`Cann`] turns them back into pointers.

use crate::result::{check, check_nn, AclError};
use crate::sys::bindings as b;
use crate::sys::{self, LoadError};
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

/// A device address.
pub type DevPtr = u64;

macro_rules! handle {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub usize);
    };
}
handle!(
    /// An `aclTensor*`.
    TensorHandle
);
handle!(
    /// An `aclScalar*`.
    ScalarHandle
);
handle!(
    /// An `aclIntArray*`.
    IntArrayHandle
);
handle!(
    /// An `aclOpExecutor*`.
    ExecutorHandle
);
handle!(
    /// An `aclrtStream`.
    StreamHandle
);

/// Element types handed to ACL (`aclDataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclDType {
    /// `ACL_FLOAT`.
    F32,
    /// `ACL_FLOAT16`.
    F16,
    /// `ACL_BF16`.
    BF16,
    /// `ACL_INT32`.
    I32,
    /// `ACL_INT64`.
    I64,
}

impl AclDType {
    /// The `aclDataType` value.
    pub fn raw(self) -> b::aclDataType {
        match self {
            AclDType::F32 => b::aclDataType_ACL_FLOAT,
            AclDType::F16 => b::aclDataType_ACL_FLOAT16,
            AclDType::BF16 => b::aclDataType_ACL_BF16,
            AclDType::I32 => b::aclDataType_ACL_INT32,
            AclDType::I64 => b::aclDataType_ACL_INT64,
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            AclDType::F32 | AclDType::I32 => 4,
            AclDType::F16 | AclDType::BF16 => 2,
            AclDType::I64 => 8,
        }
    }
}

impl From<deltanet_core::DType> for AclDType {
    fn from(d: deltanet_core::DType) -> Self {
        match d {
            deltanet_core::DType::F32 => AclDType::F32,
            deltanet_core::DType::BF16 => AclDType::BF16,
            deltanet_core::DType::F16 => AclDType::F16,
        }
    }
}

/// Everything `aclCreateTensor` is given: view dims and strides (elements),
/// dtype, format (always ND here) and the data address. The storage is
/// described as one dimension of `span()` elements starting at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDesc {
    /// Address of the first element of the view.
    pub addr: DevPtr,
    /// Element type.
    pub dtype: AclDType,
    /// View dims.
    pub shape: Vec<i64>,
    /// View strides in elements.
    pub strides: Vec<i64>,
    /// `aclFormat` (`ACL_FORMAT_ND` = 2).
    pub format: b::aclFormat,
}

impl TensorDesc {
    /// A contiguous ND tensor.
    pub fn contiguous(addr: DevPtr, dtype: AclDType, shape: &[usize]) -> Self {
        let mut strides = vec![0i64; shape.len()];
        let mut acc = 1i64;
        for i in (0..shape.len()).rev() {
            strides[i] = acc;
            acc *= shape[i] as i64;
        }
        TensorDesc { addr, dtype, shape: shape.iter().map(|&d| d as i64).collect(), strides, format: b::aclFormat_ACL_FORMAT_ND }
    }
    /// A strided ND tensor.
    pub fn strided(addr: DevPtr, dtype: AclDType, shape: &[usize], strides: &[usize]) -> Self {
        TensorDesc {
            addr,
            dtype,
            shape: shape.iter().map(|&d| d as i64).collect(),
            strides: strides.iter().map(|&s| s as i64).collect(),
            format: b::aclFormat_ACL_FORMAT_ND,
        }
    }
    /// Elements from the first to one past the last addressed element.
    pub fn span(&self) -> i64 {
        if self.shape.contains(&0) {
            return 0;
        }
        1 + self.shape.iter().zip(&self.strides).map(|(d, s)| (d - 1) * s).sum::<i64>()
    }
    /// Row-major contiguous.
    pub fn is_contiguous(&self) -> bool {
        *self == TensorDesc::contiguous(self.addr, self.dtype, &self.shape.iter().map(|&d| d as usize).collect::<Vec<_>>())
    }
}

/// The elementwise operators used by the gate and the L2 norm with the `(self, out)` signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `aclnnRsqrt`.
    Rsqrt,
    /// `aclnnExp`.
    Exp,
    /// `aclnnNeg`.
    Neg,
    /// `aclnnSigmoid`.
    Sigmoid,
}

/// Every operator this crate calls, with its arguments (handles made by the same [`AclApi`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OpCall {
    /// `aclnnChunkGatedDeltaRule`.
    ChunkGatedDeltaRule {
        /// `(T, Nk, Dk)` bf16, L2-normalised.
        query: TensorHandle,
        /// `(T, Nk, Dk)` bf16, L2-normalised.
        key: TensorHandle,
        /// `(T, Nv, Dv)` bf16.
        value: TensorHandle,
        /// `(T, Nv)` bf16.
        beta: TensorHandle,
        /// `(B, Nv, Dv, Dk)`.
        initial_state: TensorHandle,
        /// `(B,)` int32.
        actual_seq_lengths: TensorHandle,
        /// `(T, Nv)` f32.
        g: Option<TensorHandle>,
        /// Query scale.
        scale: f32,
        /// `(T, Nv, Dv)` bf16.
        out: TensorHandle,
        /// `(B, Nv, Dv, Dk)`.
        final_state: TensorHandle,
    },
    /// `aclnnRecurrentGatedDeltaRule`.
    RecurrentGatedDeltaRule {
        /// `(T, Nk, Dk)` bf16.
        query: TensorHandle,
        /// `(T, Nk, Dk)` bf16.
        key: TensorHandle,
        /// `(T, Nv, Dv)` bf16.
        value: TensorHandle,
        /// `(T, Nv)` bf16.
        beta: TensorHandle,
        /// `(BlockNum, Nv, Dv, Dk)`, in place.
        state: TensorHandle,
        /// `(B,)` int32.
        actual_seq_lengths: TensorHandle,
        /// `(T,)` int32.
        ssm_state_indices: TensorHandle,
        /// `(T, Nv)` f32.
        g: Option<TensorHandle>,
        /// `(T, Nv, Dk)` f32 (unused: GDN has a scalar gate per head).
        gk: Option<TensorHandle>,
        /// `(B,)` int32.
        num_accepted_tokens: TensorHandle,
        /// Query scale.
        scale: f32,
        /// `(T, Nv, Dv)` bf16.
        out: TensorHandle,
    },
    /// `aclnnCausalConv1dFn` (prefill, varlen).
    CausalConv1dFn {
        /// `(cuSeqLen, dim)`.
        x: TensorHandle,
        /// `(K, dim)`.
        weight: TensorHandle,
        /// `(numCacheLines, stateLen, dim)`, in place.
        conv_states: TensorHandle,
        /// `(dim,)`.
        bias: Option<TensorHandle>,
        /// `(batch+1,)` int32.
        query_start_loc: Option<TensorHandle>,
        /// `(batch,)` int32.
        cache_indices: Option<TensorHandle>,
        /// `(batch,)` int32, 0 = zeros, 1 = cached state.
        initial_state_mode: Option<TensorHandle>,
        /// `"silu"` or `"none"`.
        activation: &'static CStr,
        /// Cache index meaning "skip".
        null_block_id: i64,
        /// Block size for prefix-cache alignment (0: no block-aligned caching).
        block_size_to_align: i64,
        /// Output like `x`.
        y: TensorHandle,
    },
    /// `aclnnCausalConv1dUpdate` (decode).
    CausalConv1dUpdate {
        /// `(batch, 1, dim)` or `(cuSeqLen, dim)`.
        x: TensorHandle,
        /// `(K, dim)`.
        weight: TensorHandle,
        /// `(numCacheLines, stateLen, dim)`, in place.
        conv_states: TensorHandle,
        /// `(dim,)`.
        bias: Option<TensorHandle>,
        /// `(batch+1,)` int32.
        query_start_loc: Option<TensorHandle>,
        /// `(batch,)` int32.
        cache_indices: Option<TensorHandle>,
        /// `(batch,)` int32.
        num_accepted_tokens: Option<TensorHandle>,
        /// `"silu"` or `"none"`.
        activation: &'static CStr,
        /// Cache index meaning "skip".
        null_block_id: i64,
        /// -1: no limit.
        max_query_len: i64,
        /// Output like `x`.
        y: TensorHandle,
    },
    /// `(self, out)` elementwise.
    Unary {
        /// Which.
        op: UnaryOp,
        /// Input.
        input: TensorHandle,
        /// Output.
        out: TensorHandle,
    },
    /// `aclnnMul(self, other, out)` (broadcasting).
    Mul {
        /// Left.
        a: TensorHandle,
        /// Right.
        b: TensorHandle,
        /// Output.
        out: TensorHandle,
    },
    /// `aclnnAdd(self, other, alpha, out)` (broadcasting).
    Add {
        /// Left.
        a: TensorHandle,
        /// Right.
        b: TensorHandle,
        /// Scale of `b`.
        alpha: ScalarHandle,
        /// Output.
        out: TensorHandle,
    },
    /// `aclnnAdds(self, other, alpha, out)`.
    Adds {
        /// Input.
        input: TensorHandle,
        /// Added scalar.
        other: ScalarHandle,
        /// Its scale.
        alpha: ScalarHandle,
        /// Output.
        out: TensorHandle,
    },
    /// `aclnnSoftplus(self, beta, threshold, out)`.
    Softplus {
        /// Input.
        input: TensorHandle,
        /// Beta (1).
        beta: ScalarHandle,
        /// Threshold (20).
        threshold: ScalarHandle,
        /// Output.
        out: TensorHandle,
    },
    /// `aclnnCast(self, dtype, out)`.
    Cast {
        /// Input.
        input: TensorHandle,
        /// Target dtype.
        dtype: AclDType,
        /// Output.
        out: TensorHandle,
    },
    /// `aclnnReduceSum(self, dim, keepDim, dtype, out)`.
    ReduceSum {
        /// Input.
        input: TensorHandle,
        /// Reduced dims.
        dims: IntArrayHandle,
        /// Keep reduced dims as 1.
        keep_dim: bool,
        /// Accumulation/output dtype.
        dtype: AclDType,
        /// Output.
        out: TensorHandle,
    },
}

impl OpCall {
    /// The operator's name (`aclnnXxx`, the execute symbol).
    pub fn name(&self) -> &'static str {
        match self {
            OpCall::ChunkGatedDeltaRule { .. } => "aclnnChunkGatedDeltaRule",
            OpCall::RecurrentGatedDeltaRule { .. } => "aclnnRecurrentGatedDeltaRule",
            OpCall::CausalConv1dFn { .. } => "aclnnCausalConv1dFn",
            OpCall::CausalConv1dUpdate { .. } => "aclnnCausalConv1dUpdate",
            OpCall::Unary { op: UnaryOp::Rsqrt, .. } => "aclnnRsqrt",
            OpCall::Unary { op: UnaryOp::Exp, .. } => "aclnnExp",
            OpCall::Unary { op: UnaryOp::Neg, .. } => "aclnnNeg",
            OpCall::Unary { op: UnaryOp::Sigmoid, .. } => "aclnnSigmoid",
            OpCall::Mul { .. } => "aclnnMul",
            OpCall::Add { .. } => "aclnnAdd",
            OpCall::Adds { .. } => "aclnnAdds",
            OpCall::Softplus { .. } => "aclnnSoftplus",
            OpCall::Cast { .. } => "aclnnCast",
            OpCall::ReduceSum { .. } => "aclnnReduceSum",
        }
    }

    /// The bindings' type of this operator's first phase (its name in
    /// `src/sys/bindings.rs`); [`Cann`] calls the symbol through that type.
    pub fn ffi_type(&self) -> &'static str {
        match self {
            OpCall::ChunkGatedDeltaRule { .. } => "aclnnChunkGatedDeltaRuleGetWorkspaceSizeFn",
            OpCall::RecurrentGatedDeltaRule { .. } => "aclnnRecurrentGatedDeltaRuleGetWorkspaceSizeFn",
            OpCall::CausalConv1dFn { .. } => "aclnnCausalConv1dFnGetWorkspaceSizeFn",
            OpCall::CausalConv1dUpdate { .. } => "aclnnCausalConv1dUpdateGetWorkspaceSizeFn",
            OpCall::Unary { .. } => "aclnnUnaryGetWorkspaceSizeFn",
            OpCall::Mul { .. } => "aclnnBinaryGetWorkspaceSizeFn",
            OpCall::Add { .. } => "aclnnAddGetWorkspaceSizeFn",
            OpCall::Adds { .. } => "aclnnAddsGetWorkspaceSizeFn",
            OpCall::Softplus { .. } => "aclnnSoftplusGetWorkspaceSizeFn",
            OpCall::Cast { .. } => "aclnnCastGetWorkspaceSizeFn",
            OpCall::ReduceSum { .. } => "aclnnReduceSumGetWorkspaceSizeFn",
        }
    }

    /// Every argument of the first phase before `workspaceSize, executor`, in
    /// the order of the FFI signature, named as the bindings name the
    /// parameter. [`Cann`] passes `args()[i]` as parameter `i`; the tests
    /// check names and kinds against the bindings' parameter lists.
    pub fn args(&self) -> Vec<(&'static str, Arg)> {
        use Arg::{Bool, DType, IntArray, Scalar, Str, Tensor, F32, I64};
        let t = |h: TensorHandle| Tensor(Some(h));
        match *self {
            OpCall::ChunkGatedDeltaRule { query, key, value, beta, initial_state, actual_seq_lengths, g, scale, out, final_state } => vec![
                ("query", t(query)),
                ("key", t(key)),
                ("value", t(value)),
                ("beta", t(beta)),
                ("initialState", t(initial_state)),
                ("actualSeqLengths", t(actual_seq_lengths)),
                ("gOptional", Tensor(g)),
                ("scaleValue", F32(scale)),
                ("out", t(out)),
                ("finalState", t(final_state)),
            ],
            OpCall::RecurrentGatedDeltaRule {
                query,
                key,
                value,
                beta,
                state,
                actual_seq_lengths,
                ssm_state_indices,
                g,
                gk,
                num_accepted_tokens,
                scale,
                out,
            } => vec![
                ("query", t(query)),
                ("key", t(key)),
                ("value", t(value)),
                ("beta", t(beta)),
                ("stateRef", t(state)),
                ("actualSeqLengths", t(actual_seq_lengths)),
                ("ssmStateIndices", t(ssm_state_indices)),
                ("g", Tensor(g)),
                ("gk", Tensor(gk)),
                ("numAcceptedTokens", t(num_accepted_tokens)),
                ("scaleValue", F32(scale)),
                ("out", t(out)),
            ],
            OpCall::CausalConv1dFn {
                x,
                weight,
                conv_states,
                bias,
                query_start_loc,
                cache_indices,
                initial_state_mode,
                activation,
                null_block_id,
                block_size_to_align,
                y,
            } => vec![
                ("x", t(x)),
                ("weight", t(weight)),
                ("convStatesRef", t(conv_states)),
                ("biasOptional", Tensor(bias)),
                ("queryStartLocOptional", Tensor(query_start_loc)),
                ("cacheIndicesOptional", Tensor(cache_indices)),
                ("initialStateModeOptional", Tensor(initial_state_mode)),
                // Prefix-caching inputs this crate does not use.
                ("blockIdxFirstScheduledTokenOptional", Tensor(None)),
                ("blockIdxLastScheduledTokenOptional", Tensor(None)),
                ("initialStateIdxOptional", Tensor(None)),
                ("numComputedTokensOptional", Tensor(None)),
                ("activation", Str(activation)),
                ("nullBlockId", I64(null_block_id)),
                ("blockSizeToAlign", I64(block_size_to_align)),
                ("y", t(y)),
            ],
            OpCall::CausalConv1dUpdate {
                x,
                weight,
                conv_states,
                bias,
                query_start_loc,
                cache_indices,
                num_accepted_tokens,
                activation,
                null_block_id,
                max_query_len,
                y,
            } => vec![
                ("x", t(x)),
                ("weight", t(weight)),
                ("convStatesRef", t(conv_states)),
                ("biasOptional", Tensor(bias)),
                ("queryStartLocOptional", Tensor(query_start_loc)),
                ("cacheIndicesOptional", Tensor(cache_indices)),
                ("numAcceptedTokensOptional", Tensor(num_accepted_tokens)),
                // Prefix-caching inputs this crate does not use.
                ("blockIdxLastScheduledTokenOptional", Tensor(None)),
                ("initialStateIdxOptional", Tensor(None)),
                ("activation", Str(activation)),
                ("nullBlockId", I64(null_block_id)),
                ("maxQueryLen", I64(max_query_len)),
                ("y", t(y)),
            ],
            OpCall::Unary { input, out, .. } => vec![("self_", t(input)), ("out", t(out))],
            OpCall::Mul { a, b, out } => vec![("self_", t(a)), ("other", t(b)), ("out", t(out))],
            OpCall::Add { a, b, alpha, out } => vec![("self_", t(a)), ("other", t(b)), ("alpha", Scalar(alpha)), ("out", t(out))],
            OpCall::Adds { input, other, alpha, out } => {
                vec![("self_", t(input)), ("other", Scalar(other)), ("alpha", Scalar(alpha)), ("out", t(out))]
            }
            OpCall::Softplus { input, beta, threshold, out } => {
                vec![("self_", t(input)), ("beta", Scalar(beta)), ("threshold", Scalar(threshold)), ("out", t(out))]
            }
            OpCall::Cast { input, dtype, out } => vec![("self_", t(input)), ("dtype", DType(dtype)), ("out", t(out))],
            OpCall::ReduceSum { input, dims, keep_dim, dtype, out } => {
                vec![("self_", t(input)), ("dim", IntArray(dims)), ("keepDim", Bool(keep_dim)), ("dtype", DType(dtype)), ("out", t(out))]
            }
        }
    }

    /// Every tensor argument by its parameter name in the bindings (`None`: omitted optional).
    pub fn tensors(&self) -> Vec<(&'static str, Option<TensorHandle>)> {
        self.args()
            .into_iter()
            .filter_map(|(n, a)| match a {
                Arg::Tensor(h) => Some((n, h)),
                _ => None,
            })
            .collect()
    }
}

/// One first-phase argument, by the kind of its FFI parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    /// `const aclTensor *` or `aclTensor *`; `None` passes null.
    Tensor(Option<TensorHandle>),
    /// `const aclScalar *`.
    Scalar(ScalarHandle),
    /// `const aclIntArray *`.
    IntArray(IntArrayHandle),
    /// `float`.
    F32(f32),
    /// `int64_t`.
    I64(i64),
    /// `bool`.
    Bool(bool),
    /// `aclDataType`.
    DType(AclDType),
    /// `const char *`.
    Str(&'static CStr),
}

/// The ACL runtime and aclnn calls this crate makes. [`Cann`] forwards to the
/// native libraries; tests substitute a recorder.
pub trait AclApi: Send + Sync + 'static {
    /// `aclInit` (once per process) and the SoC name (`aclrtGetSocName`).
    fn init(&self) -> Result<String, AclError>;
    /// `aclrtGetDeviceCount`.
    fn device_count(&self) -> Result<u32, AclError>;
    /// `aclrtSetDevice`.
    fn set_device(&self, device: i32) -> Result<(), AclError>;
    /// `aclrtResetDevice`.
    fn reset_device(&self, device: i32) -> Result<(), AclError>;
    /// `aclrtCreateStream`.
    fn create_stream(&self) -> Result<StreamHandle, AclError>;
    /// `aclrtDestroyStream`.
    fn destroy_stream(&self, stream: StreamHandle) -> Result<(), AclError>;
    /// `aclrtSynchronizeStream`.
    fn synchronize(&self, stream: StreamHandle) -> Result<(), AclError>;
    /// `aclrtMalloc` (huge pages first).
    fn malloc(&self, bytes: usize) -> Result<DevPtr, AclError>;
    /// `aclrtFree`.
    fn free(&self, ptr: DevPtr) -> Result<(), AclError>;
    /// `aclrtMemcpyAsync` device to device on `stream`.
    fn memcpy_d2d_async(&self, dst: DevPtr, src: DevPtr, bytes: usize, stream: StreamHandle) -> Result<(), AclError>;
    /// `aclrtMemsetAsync` to zero on `stream`.
    fn memset_zero_async(&self, dst: DevPtr, bytes: usize, stream: StreamHandle) -> Result<(), AclError>;
    /// `aclrtMemcpy` host to device (synchronous).
    fn memcpy_h2d(&self, dst: DevPtr, src: &[u8]) -> Result<(), AclError>;
    /// `aclrtMemcpy` device to host (synchronous).
    fn memcpy_d2h(&self, dst: &mut [u8], src: DevPtr) -> Result<(), AclError>;
    /// `aclCreateTensor`.
    fn create_tensor(&self, desc: &TensorDesc) -> Result<TensorHandle, AclError>;
    /// `aclDestroyTensor`.
    fn destroy_tensor(&self, t: TensorHandle);
    /// `aclCreateScalar` of an f32.
    fn create_scalar_f32(&self, v: f32) -> Result<ScalarHandle, AclError>;
    /// `aclDestroyScalar`.
    fn destroy_scalar(&self, s: ScalarHandle);
    /// `aclCreateIntArray`.
    fn create_int_array(&self, v: &[i64]) -> Result<IntArrayHandle, AclError>;
    /// `aclDestroyIntArray`.
    fn destroy_int_array(&self, a: IntArrayHandle);
    /// Phase one: `aclnnXxxGetWorkspaceSize`.
    fn workspace_size(&self, call: &OpCall) -> Result<(u64, ExecutorHandle), AclError>;
    /// Phase two: `aclnnXxx(workspace, size, executor, stream)`.
    fn execute(&self, op: &'static str, workspace: DevPtr, size: u64, exec: ExecutorHandle, stream: StreamHandle) -> Result<(), AclError>;
}

/// The native CANN libraries, resolved at run time.
pub struct Cann {
    acl: b::AscendCl,
    nnop: b::NnopBase,
    opapi: Vec<libloading::Library>,
    /// Resolved operator symbols by name (raw addresses).
    symbols: Mutex<HashMap<String, usize>>,
    init: OnceLock<Result<String, AclError>>,
}

macro_rules! sym {
    ($lib:expr, $f:ident) => {
        $lib.$f.as_ref().map_err(|e| AclError::MissingSymbol { symbol: stringify!($f).into(), reason: e.to_string() })?
    };
}

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
    fn int_array(&self, i: usize) -> Result<*const b::aclIntArray, AclError> {
        match self.get(i, "int array")? {
            Arg::IntArray(h) => Ok(h.0 as *const b::aclIntArray),
            _ => Err(self.wrong(i, "int array")),
        }
    }
    fn f32(&self, i: usize) -> Result<f32, AclError> {
        match self.get(i, "f32")? {
            Arg::F32(v) => Ok(v),
            _ => Err(self.wrong(i, "f32")),
        }
    }
    fn i64(&self, i: usize) -> Result<i64, AclError> {
        match self.get(i, "i64")? {
            Arg::I64(v) => Ok(v),
            _ => Err(self.wrong(i, "i64")),
        }
    }
    fn bool(&self, i: usize) -> Result<bool, AclError> {
        match self.get(i, "bool")? {
            Arg::Bool(v) => Ok(v),
            _ => Err(self.wrong(i, "bool")),
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

impl Cann {
    /// Loads `libascendcl`, `libnnopbase` and every operator library found.
    pub fn load() -> Result<Self, LoadError> {
        let acl_lib = sys::open("libascendcl.so")?;
        let nnop_lib = sys::open("libnnopbase.so")?;
        let mut opapi = Vec::new();
        let mut first_err = None;
        for name in sys::OPAPI_LIBS {
            match sys::open(name) {
                Ok(l) => opapi.push(l),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if opapi.is_empty() {
            return Err(first_err.expect("OPAPI_LIBS is not empty"));
        }
        // SAFETY: `from_library` only looks symbols up; nothing is called.
        let acl = unsafe { b::AscendCl::from_library(acl_lib) }.map_err(|e| LoadError {
            library: "libascendcl.so".into(),
            tried: vec![e.to_string()],
            roots: vec![],
        })?;
        // SAFETY: as above.
        let nnop = unsafe { b::NnopBase::from_library(nnop_lib) }.map_err(|e| LoadError {
            library: "libnnopbase.so".into(),
            tried: vec![e.to_string()],
            roots: vec![],
        })?;
        Ok(Cann { acl, nnop, opapi, symbols: Mutex::new(HashMap::new()), init: OnceLock::new() })
    }

    /// Address of an operator symbol, searched across the operator libraries.
    fn symbol(&self, name: &str) -> Result<usize, AclError> {
        let mut map = self.symbols.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&a) = map.get(name) {
            return Ok(a);
        }
        let cname = CString::new(name).expect("symbol names have no NUL");
        let mut last = String::from("no operator library loaded");
        for lib in &self.opapi {
            // SAFETY: the symbol is read as an untyped address; it is only
            // called through the fn-pointer type of its documented signature.
            match unsafe { lib.get::<*const c_void>(cname.as_bytes_with_nul()) } {
                Ok(s) => {
                    let a = *s as usize;
                    map.insert(name.to_string(), a);
                    return Ok(a);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(AclError::MissingSymbol { symbol: name.to_string(), reason: last })
    }
}

impl AclApi for Cann {
    fn init(&self) -> Result<String, AclError> {
        self.init
            .get_or_init(|| {
                let f = sym!(self.acl, aclInit);
                // SAFETY: a null config path is documented as "no config file".
                let code = unsafe { f(std::ptr::null()) };
                // Another user in this process (torch_npu, a second Cann) already initialised ACL.
                if code != b::ACL_SUCCESS && code != b::ACL_ERROR_REPEAT_INITIALIZE {
                    check("aclInit", code)?;
                }
                let soc = sym!(self.acl, aclrtGetSocName);
                // SAFETY: returns a static NUL-terminated string or null.
                let p = unsafe { soc() };
                Ok(if p.is_null() {
                    String::new()
                } else {
                    // SAFETY: non-null, NUL-terminated, owned by the runtime for the process lifetime.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                })
            })
            .clone()
    }
    fn device_count(&self) -> Result<u32, AclError> {
        let f = sym!(self.acl, aclrtGetDeviceCount);
        let mut n = 0u32;
        // SAFETY: writes one u32 through a valid pointer.
        check("aclrtGetDeviceCount", unsafe { f(&mut n) })?;
        Ok(n)
    }
    fn set_device(&self, device: i32) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtSetDevice);
        // SAFETY: plain value argument.
        check("aclrtSetDevice", unsafe { f(device) })
    }
    fn reset_device(&self, device: i32) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtResetDevice);
        // SAFETY: plain value argument.
        check("aclrtResetDevice", unsafe { f(device) })
    }
    fn create_stream(&self) -> Result<StreamHandle, AclError> {
        let f = sym!(self.acl, aclrtCreateStream);
        let mut s: b::aclrtStream = std::ptr::null_mut();
        // SAFETY: writes one stream handle through a valid pointer.
        check("aclrtCreateStream", unsafe { f(&mut s) })?;
        Ok(StreamHandle(s as usize))
    }
    fn destroy_stream(&self, stream: StreamHandle) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtDestroyStream);
        // SAFETY: the handle came from aclrtCreateStream and is destroyed once (RAII owner).
        check("aclrtDestroyStream", unsafe { f(stream.0 as b::aclrtStream) })
    }
    fn synchronize(&self, stream: StreamHandle) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtSynchronizeStream);
        // SAFETY: a live stream handle.
        check("aclrtSynchronizeStream", unsafe { f(stream.0 as b::aclrtStream) })
    }
    fn malloc(&self, bytes: usize) -> Result<DevPtr, AclError> {
        let f = sym!(self.acl, aclrtMalloc);
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: writes one device pointer through a valid pointer.
        check("aclrtMalloc", unsafe { f(&mut p, bytes, b::aclrtMemMallocPolicy_ACL_MEM_MALLOC_HUGE_FIRST) })?;
        Ok(p as DevPtr)
    }
    fn free(&self, ptr: DevPtr) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtFree);
        // SAFETY: `ptr` came from aclrtMalloc and is freed once (RAII owner).
        check("aclrtFree", unsafe { f(ptr as *mut c_void) })
    }
    fn memcpy_d2d_async(&self, dst: DevPtr, src: DevPtr, bytes: usize, stream: StreamHandle) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtMemcpyAsync);
        // SAFETY: callers pass in-bounds device ranges (checked against buffer lengths).
        check("aclrtMemcpyAsync", unsafe {
            f(
                dst as *mut c_void,
                bytes,
                src as *const c_void,
                bytes,
                b::aclrtMemcpyKind_ACL_MEMCPY_DEVICE_TO_DEVICE,
                stream.0 as b::aclrtStream,
            )
        })
    }
    fn memset_zero_async(&self, dst: DevPtr, bytes: usize, stream: StreamHandle) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtMemsetAsync);
        // SAFETY: callers pass in-bounds device ranges.
        check("aclrtMemsetAsync", unsafe { f(dst as *mut c_void, bytes, 0, bytes, stream.0 as b::aclrtStream) })
    }
    fn memcpy_h2d(&self, dst: DevPtr, src: &[u8]) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtMemcpy);
        // SAFETY: `src` is a live host slice; `dst` an in-bounds device range.
        check("aclrtMemcpy(H2D)", unsafe {
            f(dst as *mut c_void, src.len(), src.as_ptr() as *const c_void, src.len(), b::aclrtMemcpyKind_ACL_MEMCPY_HOST_TO_DEVICE)
        })
    }
    fn memcpy_d2h(&self, dst: &mut [u8], src: DevPtr) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtMemcpy);
        // SAFETY: `dst` is a live, exclusively borrowed host slice; `src` an in-bounds device range.
        check("aclrtMemcpy(D2H)", unsafe {
            f(dst.as_mut_ptr() as *mut c_void, dst.len(), src as *const c_void, dst.len(), b::aclrtMemcpyKind_ACL_MEMCPY_DEVICE_TO_HOST)
        })
    }
    fn create_tensor(&self, d: &TensorDesc) -> Result<TensorHandle, AclError> {
        let f = sym!(self.nnop, aclCreateTensor);
        let storage = [d.span()];
        // SAFETY: dims/strides arrays live for the call (ACL copies them); the
        // data address is a device range of `span` elements owned by the caller
        // for the tensor's lifetime.
        let t = unsafe {
            f(
                d.shape.as_ptr(),
                d.shape.len() as u64,
                d.dtype.raw(),
                d.strides.as_ptr(),
                0,
                d.format,
                storage.as_ptr(),
                1,
                d.addr as *mut c_void,
            )
        };
        if t.is_null() {
            return Err(AclError::Null { call: "aclCreateTensor".into() });
        }
        Ok(TensorHandle(t as usize))
    }
    fn destroy_tensor(&self, t: TensorHandle) {
        if let Ok(f) = self.nnop.aclDestroyTensor.as_ref() {
            // SAFETY: the handle came from aclCreateTensor and is destroyed once (RAII owner).
            unsafe { f(t.0 as *const b::aclTensor) };
        }
    }
    fn create_scalar_f32(&self, v: f32) -> Result<ScalarHandle, AclError> {
        let f = sym!(self.nnop, aclCreateScalar);
        let mut v = v;
        // SAFETY: ACL copies the value out of the pointer during the call.
        let s = unsafe { f(&mut v as *mut f32 as *mut c_void, b::aclDataType_ACL_FLOAT) };
        if s.is_null() {
            return Err(AclError::Null { call: "aclCreateScalar".into() });
        }
        Ok(ScalarHandle(s as usize))
    }
    fn destroy_scalar(&self, s: ScalarHandle) {
        if let Ok(f) = self.nnop.aclDestroyScalar.as_ref() {
            // SAFETY: the handle came from aclCreateScalar and is destroyed once.
            unsafe { f(s.0 as *const b::aclScalar) };
        }
    }
    fn create_int_array(&self, v: &[i64]) -> Result<IntArrayHandle, AclError> {
        let f = sym!(self.nnop, aclCreateIntArray);
        // SAFETY: ACL copies the values during the call.
        let a = unsafe { f(v.as_ptr(), v.len() as u64) };
        if a.is_null() {
            return Err(AclError::Null { call: "aclCreateIntArray".into() });
        }
        Ok(IntArrayHandle(a as usize))
    }
    fn destroy_int_array(&self, a: IntArrayHandle) {
        if let Ok(f) = self.nnop.aclDestroyIntArray.as_ref() {
            // SAFETY: the handle came from aclCreateIntArray and is destroyed once.
            unsafe { f(a.0 as *const b::aclIntArray) };
        }
    }

    fn workspace_size(&self, call: &OpCall) -> Result<(u64, ExecutorHandle), AclError> {
        let name = format!("{}GetWorkspaceSize", call.name());
        let addr = self.symbol(&name)?;
        let mut ws = 0u64;
        let mut ex: *mut b::aclOpExecutor = std::ptr::null_mut();
        // Parameter i is always `a.xxx(i)?`, so the order is the one the
        // tests check against the bindings' parameter lists.
        let a = FfiArgs { op: call.name(), args: call.args() };
        // SAFETY (every arm): `addr` is the operator's phase-one symbol and is
        // called through the fn-pointer type of its documented signature; every
        // handle was made by this library and outlives the call; outputs are
        // written through valid pointers.
        let code = unsafe {
            match call {
                OpCall::ChunkGatedDeltaRule { .. } => {
                    let f: b::aclnnChunkGatedDeltaRuleGetWorkspaceSizeFn = std::mem::transmute(addr);
                    f(a.t(0)?, a.t(1)?, a.t(2)?, a.t(3)?, a.t(4)?, a.t(5)?, a.t(6)?, a.f32(7)?, a.t(8)?, a.t(9)?, &mut ws, &mut ex)
                }
                OpCall::RecurrentGatedDeltaRule { .. } => {
                    let f: b::aclnnRecurrentGatedDeltaRuleGetWorkspaceSizeFn = std::mem::transmute(addr);
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
                        a.f32(10)?,
                        a.t(11)?,
                        &mut ws,
                        &mut ex,
                    )
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
                        &mut ws,
                        &mut ex,
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
                        &mut ws,
                        &mut ex,
                    )
                }
                OpCall::Unary { .. } => {
                    let f: b::aclnnUnaryGetWorkspaceSizeFn = std::mem::transmute(addr);
                    f(a.t(0)?, a.t(1)?, &mut ws, &mut ex)
                }
                OpCall::Mul { .. } => {
                    let f: b::aclnnBinaryGetWorkspaceSizeFn = std::mem::transmute(addr);
                    f(a.t(0)?, a.t(1)?, a.t(2)?, &mut ws, &mut ex)
                }
                OpCall::Add { .. } => {
                    let f: b::aclnnAddGetWorkspaceSizeFn = std::mem::transmute(addr);
                    f(a.t(0)?, a.t(1)?, a.scalar(2)?, a.t(3)?, &mut ws, &mut ex)
                }
                OpCall::Adds { .. } => {
                    let f: b::aclnnAddsGetWorkspaceSizeFn = std::mem::transmute(addr);
                    f(a.t(0)?, a.scalar(1)?, a.scalar(2)?, a.t(3)?, &mut ws, &mut ex)
                }
                OpCall::Softplus { .. } => {
                    let f: b::aclnnSoftplusGetWorkspaceSizeFn = std::mem::transmute(addr);
                    f(a.t(0)?, a.scalar(1)?, a.scalar(2)?, a.t(3)?, &mut ws, &mut ex)
                }
                OpCall::Cast { .. } => {
                    let f: b::aclnnCastGetWorkspaceSizeFn = std::mem::transmute(addr);
                    f(a.t(0)?, a.dtype(1)?, a.t(2)?, &mut ws, &mut ex)
                }
                OpCall::ReduceSum { .. } => {
                    let f: b::aclnnReduceSumGetWorkspaceSizeFn = std::mem::transmute(addr);
                    f(a.t(0)?, a.int_array(1)?, a.bool(2)?, a.dtype(3)?, a.t(4)?, &mut ws, &mut ex)
                }
            }
        };
        check_nn(&name, code)?;
        Ok((ws, ExecutorHandle(ex as usize)))
    }

    fn execute(&self, op: &'static str, workspace: DevPtr, size: u64, exec: ExecutorHandle, stream: StreamHandle) -> Result<(), AclError> {
        let addr = self.symbol(op)?;
        // SAFETY: `addr` is the operator's phase-two symbol (the shared
        // `aclnnXxx(workspace, size, executor, stream)` signature); the executor
        // came from its phase one; the workspace holds `size` bytes.
        let code = unsafe {
            let f: b::aclnnExecuteFn = std::mem::transmute(addr);
            f(workspace as *mut c_void, size, exec.0 as *mut b::aclOpExecutor, stream.0 as b::aclrtStream)
        };
        check_nn(op, code)
    }
}
