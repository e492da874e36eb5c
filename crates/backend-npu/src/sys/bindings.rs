/* Checked-in CANN bindings, in the shape `bindgen --dynamic-loading` produces
 * (C++ mode; allow-lists `acl.*` functions and types, `ACL.*` variables; the
 * configuration is build/regenerate.rs).
 *
 * Two kinds of item:
 * - Runtime items (devices, streams, memory, data types, formats, error
 *   codes, the descriptor functions aclCreateTensor...): checked item by item
 *   against bindgen's output from CANN's own headers by check-bindings.sh
 *   (acl/acl.h, acl_rt.h, acl_base_rt.h, error_codes/rt_error_codes.h as
 *   shipped in the torch-npu 2.14.0 wheel under
 *   torch_npu/include/third_party/acl/inc/, and op-plugin's
 *   op_api_common_base.h for the descriptor-function types). CI fails on any
 *   difference in name, type, pointer constness, parameter or value.
 * - aclnn operator declarations and aclnn status codes: their headers ship in
 *   no package available here, so no machine checks them. Each is marked
 *   "not in the runtime headers" and records the public header and CANN
 *   version it was read from; the recording stand-in's contract tests read
 *   their parameter lists from this file (src/testing/recorder.rs, `ffi_params`).
 *
 * Functions are resolved at run time (libloading), so a build without CANN
 * links and runs.
 */
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, missing_docs, clippy::all)]

use std::os::raw::{c_char, c_int, c_uint, c_void};

pub type aclError = c_int;
/// aclnn/acl_meta.h (`typedef int32_t aclnnStatus`), not in the runtime headers.
pub type aclnnStatus = c_int;
pub type aclrtStream = *mut c_void;
pub type aclrtEvent = *mut c_void;

pub const ACL_SUCCESS: aclError = 0;
/// acl_base_rt.h: `aclInit` when ACL is already initialised in this process.
pub const ACL_ERROR_REPEAT_INITIALIZE: aclError = 100002;
/// acl_base_rt.h: a (host-side) allocation failed.
pub const ACL_ERROR_BAD_ALLOC: aclError = 200000;
/// error_codes/rt_error_codes.h: device memory allocation failed ("only used by out of memory").
pub const ACL_ERROR_RT_MEMORY_ALLOCATION: aclError = 207001;

/// aclnn/opdev/op_errno.h (CANN 9.0; also emitted into every generated aclnn
/// source by CANN's aclnn generator), not in the runtime headers.
pub const ACLNN_SUCCESS: aclnnStatus = 0;
/// As `ACLNN_SUCCESS`; not in the runtime headers.
pub const ACLNN_ERR_PARAM_NULLPTR: aclnnStatus = 161001;
/// As `ACLNN_SUCCESS`; not in the runtime headers.
pub const ACLNN_ERR_PARAM_INVALID: aclnnStatus = 161002;
/// aclnn/opdev/op_errno.h, not in the runtime headers. The value is not
/// confirmed from a public source (the name is, in ops-transformer's op_api
/// sources); it only names a status in error messages.
pub const ACLNN_ERR_INNER_TILING_ERROR: aclnnStatus = 561002;

pub type aclDataType = c_int;
pub const aclDataType_ACL_DT_UNDEFINED: aclDataType = -1;
pub const aclDataType_ACL_FLOAT: aclDataType = 0;
pub const aclDataType_ACL_FLOAT16: aclDataType = 1;
pub const aclDataType_ACL_INT8: aclDataType = 2;
pub const aclDataType_ACL_INT32: aclDataType = 3;
pub const aclDataType_ACL_UINT8: aclDataType = 4;
pub const aclDataType_ACL_INT16: aclDataType = 6;
pub const aclDataType_ACL_UINT16: aclDataType = 7;
pub const aclDataType_ACL_UINT32: aclDataType = 8;
pub const aclDataType_ACL_INT64: aclDataType = 9;
pub const aclDataType_ACL_UINT64: aclDataType = 10;
pub const aclDataType_ACL_DOUBLE: aclDataType = 11;
pub const aclDataType_ACL_BOOL: aclDataType = 12;
pub const aclDataType_ACL_BF16: aclDataType = 27;

pub type aclFormat = c_int;
pub const aclFormat_ACL_FORMAT_UNDEFINED: aclFormat = -1;
pub const aclFormat_ACL_FORMAT_NCHW: aclFormat = 0;
pub const aclFormat_ACL_FORMAT_NHWC: aclFormat = 1;
pub const aclFormat_ACL_FORMAT_ND: aclFormat = 2;

pub type aclrtMemcpyKind = c_uint;
pub const aclrtMemcpyKind_ACL_MEMCPY_HOST_TO_HOST: aclrtMemcpyKind = 0;
pub const aclrtMemcpyKind_ACL_MEMCPY_HOST_TO_DEVICE: aclrtMemcpyKind = 1;
pub const aclrtMemcpyKind_ACL_MEMCPY_DEVICE_TO_HOST: aclrtMemcpyKind = 2;
pub const aclrtMemcpyKind_ACL_MEMCPY_DEVICE_TO_DEVICE: aclrtMemcpyKind = 3;

pub type aclrtEventRecordedStatus = c_uint;
pub const aclrtEventRecordedStatus_ACL_EVENT_RECORDED_STATUS_NOT_READY: aclrtEventRecordedStatus = 0;
pub const aclrtEventRecordedStatus_ACL_EVENT_RECORDED_STATUS_COMPLETE: aclrtEventRecordedStatus = 1;

pub type aclrtMemMallocPolicy = c_uint;
pub const aclrtMemMallocPolicy_ACL_MEM_MALLOC_HUGE_FIRST: aclrtMemMallocPolicy = 0;
pub const aclrtMemMallocPolicy_ACL_MEM_MALLOC_HUGE_ONLY: aclrtMemMallocPolicy = 1;
pub const aclrtMemMallocPolicy_ACL_MEM_MALLOC_NORMAL_ONLY: aclrtMemMallocPolicy = 2;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct aclTensor {
    _unused: [u8; 0],
}
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct aclScalar {
    _unused: [u8; 0],
}
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct aclIntArray {
    _unused: [u8; 0],
}
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct aclOpExecutor {
    _unused: [u8; 0],
}

/// libascendcl: runtime, device, stream, memory (acl/acl.h, acl/acl_rt.h).
pub struct AscendCl {
    __library: ::libloading::Library,
    pub aclInit: Result<unsafe extern "C" fn(configPath: *const c_char) -> aclError, ::libloading::Error>,
    pub aclFinalize: Result<unsafe extern "C" fn() -> aclError, ::libloading::Error>,
    pub aclrtSetDevice: Result<unsafe extern "C" fn(deviceId: i32) -> aclError, ::libloading::Error>,
    pub aclrtResetDevice: Result<unsafe extern "C" fn(deviceId: i32) -> aclError, ::libloading::Error>,
    pub aclrtGetDeviceCount: Result<unsafe extern "C" fn(count: *mut u32) -> aclError, ::libloading::Error>,
    pub aclrtGetSocName: Result<unsafe extern "C" fn() -> *const c_char, ::libloading::Error>,
    pub aclrtCreateStream: Result<unsafe extern "C" fn(stream: *mut aclrtStream) -> aclError, ::libloading::Error>,
    pub aclrtDestroyStream: Result<unsafe extern "C" fn(stream: aclrtStream) -> aclError, ::libloading::Error>,
    pub aclrtSynchronizeStream: Result<unsafe extern "C" fn(stream: aclrtStream) -> aclError, ::libloading::Error>,
    pub aclrtMalloc:
        Result<unsafe extern "C" fn(devPtr: *mut *mut c_void, size: usize, policy: aclrtMemMallocPolicy) -> aclError, ::libloading::Error>,
    pub aclrtFree: Result<unsafe extern "C" fn(devPtr: *mut c_void) -> aclError, ::libloading::Error>,
    pub aclrtMallocHost: Result<unsafe extern "C" fn(hostPtr: *mut *mut c_void, size: usize) -> aclError, ::libloading::Error>,
    pub aclrtFreeHost: Result<unsafe extern "C" fn(hostPtr: *mut c_void) -> aclError, ::libloading::Error>,
    pub aclrtCreateEvent: Result<unsafe extern "C" fn(event: *mut aclrtEvent) -> aclError, ::libloading::Error>,
    pub aclrtDestroyEvent: Result<unsafe extern "C" fn(event: aclrtEvent) -> aclError, ::libloading::Error>,
    pub aclrtRecordEvent: Result<unsafe extern "C" fn(event: aclrtEvent, stream: aclrtStream) -> aclError, ::libloading::Error>,
    pub aclrtQueryEventStatus:
        Result<unsafe extern "C" fn(event: aclrtEvent, status: *mut aclrtEventRecordedStatus) -> aclError, ::libloading::Error>,
    pub aclrtSynchronizeEvent: Result<unsafe extern "C" fn(event: aclrtEvent) -> aclError, ::libloading::Error>,
    pub aclrtMemcpy: Result<
        unsafe extern "C" fn(dst: *mut c_void, destMax: usize, src: *const c_void, count: usize, kind: aclrtMemcpyKind) -> aclError,
        ::libloading::Error,
    >,
    pub aclrtMemcpyAsync: Result<
        unsafe extern "C" fn(
            dst: *mut c_void,
            destMax: usize,
            src: *const c_void,
            count: usize,
            kind: aclrtMemcpyKind,
            stream: aclrtStream,
        ) -> aclError,
        ::libloading::Error,
    >,
    pub aclrtMemsetAsync: Result<
        unsafe extern "C" fn(devPtr: *mut c_void, maxCount: usize, value: i32, count: usize, stream: aclrtStream) -> aclError,
        ::libloading::Error,
    >,
}

impl AscendCl {
    pub unsafe fn new<P>(path: P) -> Result<Self, ::libloading::Error>
    where
        P: AsRef<::std::ffi::OsStr>,
    {
        let library = ::libloading::Library::new(path)?;
        Self::from_library(library)
    }

    pub unsafe fn from_library<L>(library: L) -> Result<Self, ::libloading::Error>
    where
        L: Into<::libloading::Library>,
    {
        let __library = library.into();
        let aclInit = __library.get(b"aclInit\0").map(|sym| *sym);
        let aclFinalize = __library.get(b"aclFinalize\0").map(|sym| *sym);
        let aclrtSetDevice = __library.get(b"aclrtSetDevice\0").map(|sym| *sym);
        let aclrtResetDevice = __library.get(b"aclrtResetDevice\0").map(|sym| *sym);
        let aclrtGetDeviceCount = __library.get(b"aclrtGetDeviceCount\0").map(|sym| *sym);
        let aclrtGetSocName = __library.get(b"aclrtGetSocName\0").map(|sym| *sym);
        let aclrtCreateStream = __library.get(b"aclrtCreateStream\0").map(|sym| *sym);
        let aclrtDestroyStream = __library.get(b"aclrtDestroyStream\0").map(|sym| *sym);
        let aclrtSynchronizeStream = __library.get(b"aclrtSynchronizeStream\0").map(|sym| *sym);
        let aclrtMalloc = __library.get(b"aclrtMalloc\0").map(|sym| *sym);
        let aclrtFree = __library.get(b"aclrtFree\0").map(|sym| *sym);
        let aclrtMallocHost = __library.get(b"aclrtMallocHost\0").map(|sym| *sym);
        let aclrtFreeHost = __library.get(b"aclrtFreeHost\0").map(|sym| *sym);
        let aclrtCreateEvent = __library.get(b"aclrtCreateEvent\0").map(|sym| *sym);
        let aclrtDestroyEvent = __library.get(b"aclrtDestroyEvent\0").map(|sym| *sym);
        let aclrtRecordEvent = __library.get(b"aclrtRecordEvent\0").map(|sym| *sym);
        let aclrtQueryEventStatus = __library.get(b"aclrtQueryEventStatus\0").map(|sym| *sym);
        let aclrtSynchronizeEvent = __library.get(b"aclrtSynchronizeEvent\0").map(|sym| *sym);
        let aclrtMemcpy = __library.get(b"aclrtMemcpy\0").map(|sym| *sym);
        let aclrtMemcpyAsync = __library.get(b"aclrtMemcpyAsync\0").map(|sym| *sym);
        let aclrtMemsetAsync = __library.get(b"aclrtMemsetAsync\0").map(|sym| *sym);
        Ok(AscendCl {
            __library,
            aclInit,
            aclFinalize,
            aclrtSetDevice,
            aclrtResetDevice,
            aclrtGetDeviceCount,
            aclrtGetSocName,
            aclrtCreateStream,
            aclrtDestroyStream,
            aclrtSynchronizeStream,
            aclrtMalloc,
            aclrtFree,
            aclrtMallocHost,
            aclrtFreeHost,
            aclrtCreateEvent,
            aclrtDestroyEvent,
            aclrtRecordEvent,
            aclrtQueryEventStatus,
            aclrtSynchronizeEvent,
            aclrtMemcpy,
            aclrtMemcpyAsync,
            aclrtMemsetAsync,
        })
    }
}

/// libnnopbase: aclnn tensor, scalar and int-array descriptors (aclnn/acl_meta.h).
pub struct NnopBase {
    __library: ::libloading::Library,
    pub aclCreateTensor: Result<
        unsafe extern "C" fn(
            viewDims: *const i64,
            viewDimsNum: u64,
            dataType: aclDataType,
            stride: *const i64,
            offset: i64,
            format: aclFormat,
            storageDims: *const i64,
            storageDimsNum: u64,
            tensorData: *mut c_void,
        ) -> *mut aclTensor,
        ::libloading::Error,
    >,
    pub aclDestroyTensor: Result<unsafe extern "C" fn(tensor: *const aclTensor) -> aclnnStatus, ::libloading::Error>,
    pub aclCreateScalar: Result<unsafe extern "C" fn(value: *mut c_void, dataType: aclDataType) -> *mut aclScalar, ::libloading::Error>,
    pub aclDestroyScalar: Result<unsafe extern "C" fn(scalar: *const aclScalar) -> aclnnStatus, ::libloading::Error>,
    pub aclCreateIntArray: Result<unsafe extern "C" fn(value: *const i64, size: u64) -> *mut aclIntArray, ::libloading::Error>,
    pub aclDestroyIntArray: Result<unsafe extern "C" fn(array: *const aclIntArray) -> aclnnStatus, ::libloading::Error>,
}

impl NnopBase {
    pub unsafe fn new<P>(path: P) -> Result<Self, ::libloading::Error>
    where
        P: AsRef<::std::ffi::OsStr>,
    {
        let library = ::libloading::Library::new(path)?;
        Self::from_library(library)
    }

    pub unsafe fn from_library<L>(library: L) -> Result<Self, ::libloading::Error>
    where
        L: Into<::libloading::Library>,
    {
        let __library = library.into();
        let aclCreateTensor = __library.get(b"aclCreateTensor\0").map(|sym| *sym);
        let aclDestroyTensor = __library.get(b"aclDestroyTensor\0").map(|sym| *sym);
        let aclCreateScalar = __library.get(b"aclCreateScalar\0").map(|sym| *sym);
        let aclDestroyScalar = __library.get(b"aclDestroyScalar\0").map(|sym| *sym);
        let aclCreateIntArray = __library.get(b"aclCreateIntArray\0").map(|sym| *sym);
        let aclDestroyIntArray = __library.get(b"aclDestroyIntArray\0").map(|sym| *sym);
        Ok(NnopBase {
            __library,
            aclCreateTensor,
            aclDestroyTensor,
            aclCreateScalar,
            aclDestroyScalar,
            aclCreateIntArray,
            aclDestroyIntArray,
        })
    }
}

/// Second phase of every aclnn operator: `aclnnXxx(workspace, workspaceSize, executor, stream)`;
/// checked against op-plugin's `OpApiFunc`, the type torch_npu calls every operator's second phase through.
pub type aclnnExecuteFn =
    unsafe extern "C" fn(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream) -> aclnnStatus;

/// aclnnChunkGatedDeltaRuleGetWorkspaceSize, not in the runtime headers. Read from
/// ops-transformer `attention/chunk_gated_delta_rule/op_host/op_api/aclnn_chunk_gated_delta_rule.h`
/// (installed as aclnnop/aclnn_chunk_gated_delta_rule.h; ops-transformer 9.0.0, for CANN >= 8.5.0,
/// file version 3766edde): `out` and `finalState` are non-const `aclTensor *`.
pub type aclnnChunkGatedDeltaRuleGetWorkspaceSizeFn = unsafe extern "C" fn(
    query: *const aclTensor,
    key: *const aclTensor,
    value: *const aclTensor,
    beta: *const aclTensor,
    initialState: *const aclTensor,
    actualSeqLengths: *const aclTensor,
    gOptional: *const aclTensor,
    scaleValue: f32,
    out: *mut aclTensor,
    finalState: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// aclnnRecurrentGatedDeltaRuleGetWorkspaceSize, not in the runtime headers. Read from
/// ops-transformer `attention/recurrent_gated_delta_rule/op_host/op_api/aclnn_recurrent_gated_delta_rule.h`
/// (installed as aclnnop/aclnn_recurrent_gated_delta_rule.h; ops-transformer 9.0.0, for CANN >= 8.5.0,
/// file version 82a8b063).
pub type aclnnRecurrentGatedDeltaRuleGetWorkspaceSizeFn = unsafe extern "C" fn(
    query: *const aclTensor,
    key: *const aclTensor,
    value: *const aclTensor,
    beta: *const aclTensor,
    stateRef: *mut aclTensor,
    actualSeqLengths: *const aclTensor,
    ssmStateIndices: *const aclTensor,
    g: *const aclTensor,
    gk: *const aclTensor,
    numAcceptedTokens: *const aclTensor,
    scaleValue: f32,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// aclnnCausalConv1dFnGetWorkspaceSize, not in the runtime headers. Read from the public
/// ops-transformer header aclnn_causal_conv1d_fn.h (copyright 2026; installed as
/// aclnnop/aclnn_causal_conv1d_fn.h), its op_api source and docs/aclnnCausalConv1dFn.md,
/// which agree. The file states no CANN version; the ops-transformer tree carrying the GDN
/// headers is 9.0.0 (for CANN >= 8.5.0).
pub type aclnnCausalConv1dFnGetWorkspaceSizeFn = unsafe extern "C" fn(
    x: *const aclTensor,
    weight: *const aclTensor,
    convStatesRef: *mut aclTensor,
    biasOptional: *const aclTensor,
    queryStartLocOptional: *const aclTensor,
    cacheIndicesOptional: *const aclTensor,
    initialStateModeOptional: *const aclTensor,
    blockIdxFirstScheduledTokenOptional: *const aclTensor,
    blockIdxLastScheduledTokenOptional: *const aclTensor,
    initialStateIdxOptional: *const aclTensor,
    numComputedTokensOptional: *const aclTensor,
    activation: *const c_char,
    nullBlockId: i64,
    blockSizeToAlign: i64,
    y: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// aclnnCausalConv1dUpdateGetWorkspaceSize, not in the runtime headers. Read from the public
/// ops-transformer header aclnn_causal_conv1d_update.h (copyright 2026; installed as
/// aclnnop/aclnn_causal_conv1d_update.h), its op_api source and docs/aclnnCausalConv1dUpdate.md,
/// which agree. The file states no CANN version; the ops-transformer tree carrying the GDN
/// headers is 9.0.0 (for CANN >= 8.5.0).
pub type aclnnCausalConv1dUpdateGetWorkspaceSizeFn = unsafe extern "C" fn(
    x: *const aclTensor,
    weight: *const aclTensor,
    convStatesRef: *mut aclTensor,
    biasOptional: *const aclTensor,
    queryStartLocOptional: *const aclTensor,
    cacheIndicesOptional: *const aclTensor,
    numAcceptedTokensOptional: *const aclTensor,
    blockIdxLastScheduledTokenOptional: *const aclTensor,
    initialStateIdxOptional: *const aclTensor,
    activation: *const c_char,
    nullBlockId: i64,
    maxQueryLen: i64,
    y: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// `(self, out)`: aclnnExp, aclnnNeg, aclnnSigmoid; not in the runtime headers.
/// CANN ops-math aclnnop/aclnn_{exp,neg,sigmoid}.h (CANN 8.x API reference signatures).
pub type aclnnUnaryGetWorkspaceSizeFn = unsafe extern "C" fn(
    self_: *const aclTensor,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// `(self, other, out)`: aclnnMul; not in the runtime headers.
/// CANN ops-math aclnnop/aclnn_mul.h (CANN 8.x API reference signature).
pub type aclnnBinaryGetWorkspaceSizeFn = unsafe extern "C" fn(
    self_: *const aclTensor,
    other: *const aclTensor,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// `(self, other, alpha, out)`: aclnnAdd; not in the runtime headers.
/// CANN ops-math aclnnop/aclnn_add.h (CANN 8.x API reference signature).
pub type aclnnAddGetWorkspaceSizeFn = unsafe extern "C" fn(
    self_: *const aclTensor,
    other: *const aclTensor,
    alpha: *const aclScalar,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// aclnnSoftplusGetWorkspaceSize; not in the runtime headers.
/// CANN aclnnop/aclnn_softplus.h (CANN 8.x API reference signature).
pub type aclnnSoftplusGetWorkspaceSizeFn = unsafe extern "C" fn(
    self_: *const aclTensor,
    beta: *const aclScalar,
    threshold: *const aclScalar,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// aclnnRmsNormGetWorkspaceSize; not in the runtime headers.
/// CANN aclnnop/aclnn_rms_norm.h (CANN 8.0–8.3 API reference signature: both outputs
/// are declared `const aclTensor *`).
pub type aclnnRmsNormGetWorkspaceSizeFn = unsafe extern "C" fn(
    x: *const aclTensor,
    gamma: *const aclTensor,
    epsilon: f64,
    yOut: *const aclTensor,
    rstdOut: *const aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// aclnnCastGetWorkspaceSize; not in the runtime headers.
/// CANN ops-math aclnnop/aclnn_cast.h (CANN 8.x API reference signature).
pub type aclnnCastGetWorkspaceSizeFn = unsafe extern "C" fn(
    self_: *const aclTensor,
    dtype: aclDataType,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus;
