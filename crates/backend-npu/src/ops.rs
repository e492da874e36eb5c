//! Every aclnn operator this crate calls, as data ([`OpCall`]): its
//! arguments by the bindings' parameter names and in FFI order
//! ([`OpCall::args`]), so the real function table, the recording stand-in
//! and the contract tests all read one list and cannot drift apart.

use crate::api::{AclDType, ScalarHandle, TensorHandle};
use std::ffi::CStr;

/// The elementwise operators of the gate with the `(self, out)` signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `aclnnExp`.
    Exp,
    /// `aclnnNeg`.
    Neg,
    /// `aclnnSigmoid`.
    Sigmoid,
}

/// Every operator this crate calls, with its arguments (handles made by the same [`AclApi`](crate::api::AclApi)).
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
    /// `aclnnRmsNorm(x, gamma, epsilon, yOut, rstdOut)`: `y = x / sqrt(mean(x^2) + epsilon) * gamma`
    /// over the trailing dims `gamma` spans, computed in f32.
    RmsNorm {
        /// Input.
        x: TensorHandle,
        /// Scale over the normalised dims.
        gamma: TensorHandle,
        /// Added to the mean of squares.
        epsilon: f64,
        /// Output like `x`.
        y: TensorHandle,
        /// `1 / sqrt(mean(x^2) + epsilon)`, f32, the normalised dims kept as 1.
        rstd: TensorHandle,
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
            OpCall::Unary { op: UnaryOp::Exp, .. } => "aclnnExp",
            OpCall::Unary { op: UnaryOp::Neg, .. } => "aclnnNeg",
            OpCall::Unary { op: UnaryOp::Sigmoid, .. } => "aclnnSigmoid",
            OpCall::Mul { .. } => "aclnnMul",
            OpCall::Add { .. } => "aclnnAdd",
            OpCall::Softplus { .. } => "aclnnSoftplus",
            OpCall::Cast { .. } => "aclnnCast",
            OpCall::RmsNorm { .. } => "aclnnRmsNorm",
        }
    }

    /// The bindings' type of this operator's first phase (its name in
    /// `src/sys/bindings.rs`); [`Cann`](crate::cann::Cann) calls the symbol through that type.
    pub fn ffi_type(&self) -> &'static str {
        match self {
            OpCall::ChunkGatedDeltaRule { .. } => "aclnnChunkGatedDeltaRuleGetWorkspaceSizeFn",
            OpCall::RecurrentGatedDeltaRule { .. } => "aclnnRecurrentGatedDeltaRuleGetWorkspaceSizeFn",
            OpCall::CausalConv1dFn { .. } => "aclnnCausalConv1dFnGetWorkspaceSizeFn",
            OpCall::CausalConv1dUpdate { .. } => "aclnnCausalConv1dUpdateGetWorkspaceSizeFn",
            OpCall::Unary { .. } => "aclnnUnaryGetWorkspaceSizeFn",
            OpCall::Mul { .. } => "aclnnBinaryGetWorkspaceSizeFn",
            OpCall::Add { .. } => "aclnnAddGetWorkspaceSizeFn",
            OpCall::Softplus { .. } => "aclnnSoftplusGetWorkspaceSizeFn",
            OpCall::Cast { .. } => "aclnnCastGetWorkspaceSizeFn",
            OpCall::RmsNorm { .. } => "aclnnRmsNormGetWorkspaceSizeFn",
        }
    }

    /// Every argument of the first phase before `workspaceSize, executor`, in
    /// the order of the FFI signature, named as the bindings name the
    /// parameter. [`Cann`](crate::cann::Cann) passes `args()[i]` as parameter `i`; the tests
    /// check names and kinds against the bindings' parameter lists.
    pub fn args(&self) -> Vec<(&'static str, Arg)> {
        use Arg::{DType, Scalar, Str, Tensor, F32, F64, I64};
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
            OpCall::Softplus { input, beta, threshold, out } => {
                vec![("self_", t(input)), ("beta", Scalar(beta)), ("threshold", Scalar(threshold)), ("out", t(out))]
            }
            OpCall::Cast { input, dtype, out } => vec![("self_", t(input)), ("dtype", DType(dtype)), ("out", t(out))],
            OpCall::RmsNorm { x, gamma, epsilon, y, rstd } => {
                vec![("x", t(x)), ("gamma", t(gamma)), ("epsilon", F64(epsilon)), ("yOut", t(y)), ("rstdOut", t(rstd))]
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
    /// `float`.
    F32(f32),
    /// `double`.
    F64(f64),
    /// `int64_t`.
    I64(i64),
    /// `aclDataType`.
    DType(AclDType),
    /// `const char *`.
    Str(&'static CStr),
}
