//! [`Cann`]: the native CANN libraries, loaded at run time and called
//! through the checked-in bindings. The operators' first phase goes through
//! `marshal`, which turns an [`OpCall`] into its FFI call.

mod marshal;
mod symbols;

use crate::api::{
    AclApi, DevPtr, EventHandle, ExecutorHandle, HostPtr, IntArrayHandle, ScalarHandle, StreamHandle, TensorDesc, TensorHandle,
};
use crate::ops::OpCall;
use crate::result::{check, check_nn, AclError};
use crate::sys::bindings as b;
use crate::sys::{self, LoadError};
use std::ffi::{c_void, CStr, CString};
use std::sync::OnceLock;
use symbols::{OperatorSymbols, Phase};

/// The native CANN libraries, resolved at run time.
pub struct Cann {
    acl: b::AscendCl,
    nnop: b::NnopBase,
    opapi: Vec<libloading::Library>,
    /// The operators' symbols, resolved on first use.
    symbols: OperatorSymbols,
    init: OnceLock<Result<String, AclError>>,
}

macro_rules! sym {
    ($lib:expr, $f:ident) => {
        $lib.$f.as_ref().map_err(|e| AclError::MissingSymbol { symbol: stringify!($f).into(), reason: e.to_string() })?
    };
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
        Ok(Cann { acl, nnop, opapi, symbols: OperatorSymbols::new(), init: OnceLock::new() })
    }

    /// Address of an operator symbol, searched across the operator libraries
    /// (once per operator and phase: [`OperatorSymbols`]).
    fn symbol(&self, op: &'static str, phase: Phase) -> Result<usize, AclError> {
        self.symbols.get(op, phase, |name| self.lookup(name))
    }

    fn lookup(&self, name: &str) -> Result<usize, AclError> {
        let cname = CString::new(name).expect("symbol names have no NUL");
        let mut last = String::from("no operator library loaded");
        for lib in &self.opapi {
            // SAFETY: the symbol is read as an untyped address; it is only
            // called through the fn-pointer type of its documented signature.
            match unsafe { lib.get::<*const c_void>(cname.as_bytes_with_nul()) } {
                Ok(s) => return Ok(*s as usize),
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
    fn malloc_host(&self, bytes: usize) -> Result<HostPtr, AclError> {
        let f = sym!(self.acl, aclrtMallocHost);
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: writes one host pointer through a valid pointer.
        check("aclrtMallocHost", unsafe { f(&mut p, bytes) })?;
        Ok(p as HostPtr)
    }
    fn free_host(&self, ptr: HostPtr) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtFreeHost);
        // SAFETY: `ptr` came from aclrtMallocHost and is freed once (RAII owner), after its last upload ran.
        check("aclrtFreeHost", unsafe { f(ptr as *mut c_void) })
    }
    fn memcpy_h2d_async(&self, dst: DevPtr, src: HostPtr, bytes: usize, stream: StreamHandle) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtMemcpyAsync);
        // SAFETY: `src` is page-locked host memory of at least `bytes`, left
        // untouched until the copy has run (the plan's event); `dst` an in-bounds device range.
        check("aclrtMemcpyAsync(H2D)", unsafe {
            f(
                dst as *mut c_void,
                bytes,
                src as *const c_void,
                bytes,
                b::aclrtMemcpyKind_ACL_MEMCPY_HOST_TO_DEVICE,
                stream.0 as b::aclrtStream,
            )
        })
    }
    fn create_event(&self) -> Result<EventHandle, AclError> {
        let f = sym!(self.acl, aclrtCreateEvent);
        let mut e: b::aclrtEvent = std::ptr::null_mut();
        // SAFETY: writes one event handle through a valid pointer.
        check("aclrtCreateEvent", unsafe { f(&mut e) })?;
        Ok(EventHandle(e as usize))
    }
    fn destroy_event(&self, event: EventHandle) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtDestroyEvent);
        // SAFETY: the handle came from aclrtCreateEvent and is destroyed once (RAII owner).
        check("aclrtDestroyEvent", unsafe { f(event.0 as b::aclrtEvent) })
    }
    fn record_event(&self, event: EventHandle, stream: StreamHandle) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtRecordEvent);
        // SAFETY: a live event and a live stream.
        check("aclrtRecordEvent", unsafe { f(event.0 as b::aclrtEvent, stream.0 as b::aclrtStream) })
    }
    fn event_complete(&self, event: EventHandle) -> Result<bool, AclError> {
        let f = sym!(self.acl, aclrtQueryEventStatus);
        let mut status: b::aclrtEventRecordedStatus = b::aclrtEventRecordedStatus_ACL_EVENT_RECORDED_STATUS_NOT_READY;
        // SAFETY: a live event; writes one status through a valid pointer.
        check("aclrtQueryEventStatus", unsafe { f(event.0 as b::aclrtEvent, &mut status) })?;
        Ok(status == b::aclrtEventRecordedStatus_ACL_EVENT_RECORDED_STATUS_COMPLETE)
    }
    fn synchronize_event(&self, event: EventHandle) -> Result<(), AclError> {
        let f = sym!(self.acl, aclrtSynchronizeEvent);
        // SAFETY: a live event.
        check("aclrtSynchronizeEvent", unsafe { f(event.0 as b::aclrtEvent) })
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
        let addr = self.symbol(call.name(), Phase::WorkspaceSize)?;
        let mut ws = 0u64;
        let mut ex: *mut b::aclOpExecutor = std::ptr::null_mut();
        // SAFETY: `addr` is the operator's phase-one symbol (looked up by
        // `call.name()`); every handle in `call` was made by this library and
        // outlives the call; `ws` and `ex` are valid for writes.
        let code = unsafe { marshal::get_workspace_size(addr, call, &mut ws, &mut ex) }?;
        if code != 0 {
            // named by its phase-one symbol, as before (formatted on failure only)
            check_nn(&format!("{}GetWorkspaceSize", call.name()), code)?;
        }
        Ok((ws, ExecutorHandle(ex as usize)))
    }

    fn execute(&self, op: &'static str, workspace: DevPtr, size: u64, exec: ExecutorHandle, stream: StreamHandle) -> Result<(), AclError> {
        let addr = self.symbol(op, Phase::Execute)?;
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
