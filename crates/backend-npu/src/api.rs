//! The ACL/aclnn function table as a trait ([`AclApi`]), and the plain data
//! its methods take: device addresses, native handles, element types and
//! tensor descriptors.
//!
//! It is a trait so the marshalling layer ([`crate::safe`], the dispatcher)
//! runs unchanged against the real libraries ([`Cann`]) or a stand-in (the
//! recording function table of the `testing` feature). Handles are plain
//! integers (the native pointers' addresses) so the trait is object-safe and
//! `Send + Sync`; only [`Cann`] turns them back into pointers.

use crate::result::AclError;
use crate::sys::bindings as b;

pub use crate::cann::Cann;
// The operator calls are the argument of `workspace_size`; re-exported so the
// dispatcher names the function table's whole vocabulary from one place.
pub use crate::ops::{Arg, OpCall, UnaryOp};

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
handle!(
    /// An `aclrtEvent`.
    EventHandle
);

/// A page-locked host address (`aclrtMallocHost`): the source of an
/// asynchronous upload.
pub type HostPtr = usize;

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

/// The ACL runtime and aclnn calls this crate makes. [`Cann`] forwards to the
/// native libraries; the `testing` feature's recording
/// stand-in records the calls instead.
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
    /// `aclrtMallocHost`: page-locked host memory, which `aclrtMemcpyAsync`
    /// copies from asynchronously.
    fn malloc_host(&self, bytes: usize) -> Result<HostPtr, AclError>;
    /// `aclrtFreeHost`.
    fn free_host(&self, ptr: HostPtr) -> Result<(), AclError>;
    /// `aclrtMemcpyAsync` host to device on `stream`, from page-locked `src`:
    /// queued, not run; `src` must not be rewritten until the copy has run.
    fn memcpy_h2d_async(&self, dst: DevPtr, src: HostPtr, bytes: usize, stream: StreamHandle) -> Result<(), AclError>;
    /// `aclrtCreateEvent`.
    fn create_event(&self) -> Result<EventHandle, AclError>;
    /// `aclrtDestroyEvent`.
    fn destroy_event(&self, event: EventHandle) -> Result<(), AclError>;
    /// `aclrtRecordEvent`: the event completes when the work queued on `stream` before it has run.
    fn record_event(&self, event: EventHandle, stream: StreamHandle) -> Result<(), AclError>;
    /// `aclrtQueryEventStatus`: whether the recorded event has completed (never waits).
    fn event_complete(&self, event: EventHandle) -> Result<bool, AclError>;
    /// `aclrtSynchronizeEvent`: the host waits until the event completes.
    fn synchronize_event(&self, event: EventHandle) -> Result<(), AclError>;
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
