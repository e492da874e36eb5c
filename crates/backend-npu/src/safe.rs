//! Safe layer: RAII owners of the device (set/reset), the stream, device
//! buffers and aclnn descriptors, and [`NpuContext::run`], the one helper for
//! the two-phase aclnn call (GetWorkspaceSize → workspace from the stream's
//! cache → execute).

use crate::api::{
    AclApi, AclDType, DevPtr, EventHandle, HostPtr, IntArrayHandle, OpCall, ScalarHandle, StreamHandle, TensorDesc, TensorHandle,
};
use crate::result::AclError;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

thread_local! {
    /// Devices this thread has bound with `aclrtSetDevice` (ACL binds devices per thread).
    static BOUND: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// One device and one stream: everything this backend issues goes to this
/// stream, in order, so copies and operators never race each other.
pub struct NpuContext {
    api: Arc<dyn AclApi>,
    device: usize,
    soc: String,
    stream: StreamHandle,
    /// Whether this context created the stream (and destroys it on drop);
    /// an engine's stream ([`NpuContext::on_stream`]) is only borrowed.
    owns_stream: bool,
    /// The per-stream workspace cache: grown on demand, reused by every operator.
    workspace: Mutex<Option<DeviceBuffer>>,
    /// The per-stream scratch: operations' temporaries and step plans' device tables, recycled.
    scratch: Arc<Mutex<Scratch>>,
}

/// Device allocations of released temporaries, kept for reuse instead of
/// freed. Only the stream writes them (operators, device copies, a plan's
/// asynchronous upload), so one is `free` again as soon as it is released:
/// whatever reuses it is queued after every operation that used it, and no
/// host ever waits for that. After a warm-up step, an operation's
/// temporaries all come from `free`: no device allocation per call.
#[derive(Debug, Default)]
struct Scratch {
    /// (capacity, address), reusable by work queued from now on.
    free: Vec<(usize, DevPtr)>,
}

impl std::fmt::Debug for NpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpuContext").field("device", &self.device).field("soc", &self.soc).finish()
    }
}

impl NpuContext {
    /// Initialises ACL, selects `device` and creates a stream on it.
    pub fn new(api: Arc<dyn AclApi>, device: usize) -> Result<Self, AclError> {
        Self::open(api, device, None)
    }

    /// Initialises ACL and selects `device`, issuing everything on the
    /// engine's `stream` (an `aclrtStream` of that device, which the engine
    /// keeps alive for the context's life; it is not destroyed on drop).
    pub fn on_stream(api: Arc<dyn AclApi>, device: usize, stream: StreamHandle) -> Result<Self, AclError> {
        Self::open(api, device, Some(stream))
    }

    fn open(api: Arc<dyn AclApi>, device: usize, engine_stream: Option<StreamHandle>) -> Result<Self, AclError> {
        let soc = api.init()?;
        let count = api.device_count()?;
        if device as u32 >= count {
            return Err(AclError::Runtime { call: format!("aclrtSetDevice({device}): {count} devices present"), code: 107001 });
        }
        api.set_device(device as i32)?;
        BOUND.with(|b| b.borrow_mut().push(device));
        let stream = match engine_stream.map_or_else(|| api.create_stream(), Ok) {
            Ok(s) => s,
            Err(e) => {
                let _ = api.reset_device(device as i32);
                return Err(e);
            }
        };
        Ok(NpuContext {
            api,
            device,
            soc,
            stream,
            owns_stream: engine_stream.is_none(),
            workspace: Mutex::new(None),
            scratch: Arc::default(),
        })
    }

    /// The function table.
    pub fn api(&self) -> &Arc<dyn AclApi> {
        &self.api
    }
    /// Device id.
    pub fn device(&self) -> usize {
        self.device
    }
    /// SoC name reported by the runtime (`Ascend910B3`, `Ascend910_9391`, `Ascend950PR_...`).
    pub fn soc(&self) -> &str {
        &self.soc
    }
    /// The stream.
    pub fn stream(&self) -> StreamHandle {
        self.stream
    }
    /// Binds this context's device to the calling thread (once per thread):
    /// ACL requires `aclrtSetDevice` on every thread that issues work.
    pub fn bind(&self) -> Result<(), AclError> {
        if BOUND.with(|b| b.borrow().contains(&self.device)) {
            return Ok(());
        }
        self.api.set_device(self.device as i32)?;
        BOUND.with(|b| b.borrow_mut().push(self.device));
        Ok(())
    }

    /// Waits for everything issued so far (pool transfers to and from the
    /// host wait; an operation never does).
    pub fn synchronize(&self) -> Result<(), AclError> {
        self.bind()?;
        self.api.synchronize(self.stream)
    }

    /// Allocates `bytes` device bytes (uninitialised).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, AclError> {
        self.bind()?;
        let ptr = if bytes == 0 { 0 } else { self.api.malloc(bytes)? };
        Ok(DeviceBuffer { api: self.api.clone(), ptr, len: bytes, capacity: bytes, recycle: None })
    }

    /// `bytes` device bytes (uninitialised) for a temporary of an operation:
    /// the smallest free scratch allocation that fits, else a new one; it
    /// returns to the scratch when dropped.
    pub fn scratch(&self, bytes: usize) -> Result<DeviceBuffer, AclError> {
        if bytes == 0 {
            return self.alloc(0);
        }
        let reuse = {
            let mut s = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
            let best = s.free.iter().enumerate().filter(|(_, &(cap, _))| cap >= bytes).min_by_key(|(_, &(cap, _))| cap).map(|(i, _)| i);
            best.map(|i| s.free.swap_remove(i))
        };
        let (capacity, ptr) = match reuse {
            Some(r) => r,
            None => {
                self.bind()?;
                (bytes, self.api.malloc(bytes)?)
            }
        };
        Ok(DeviceBuffer { api: self.api.clone(), ptr, len: bytes, capacity, recycle: Some(self.scratch.clone()) })
    }

    /// `bytes` of page-locked host memory (the staging of asynchronous uploads).
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedBuffer, AclError> {
        self.bind()?;
        let ptr = self.api.malloc_host(bytes.max(1))?;
        Ok(PinnedBuffer { api: self.api.clone(), ptr, len: bytes.max(1) })
    }

    /// Queues a copy of the first `bytes` of `src` to `dst` on the stream:
    /// asynchronous, so `src` must stay unchanged until it has run (record an
    /// [`StreamEvent`] after it and ask that).
    pub fn upload_async(&self, dst: DevPtr, src: &PinnedBuffer, bytes: usize) -> Result<(), AclError> {
        assert!(bytes <= src.len, "upload of {bytes} bytes from a staging buffer of {}", src.len);
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        self.api.memcpy_h2d_async(dst, src.ptr, bytes, self.stream)
    }

    /// A new event on this context's device.
    pub fn event(&self) -> Result<StreamEvent, AclError> {
        self.bind()?;
        Ok(StreamEvent { api: self.api.clone(), handle: self.api.create_event()?, stream: self.stream })
    }

    /// Device-to-device copy on the stream.
    pub fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), AclError> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        self.api.memcpy_d2d_async(dst, src, bytes, self.stream)
    }

    /// Zeroes device bytes on the stream.
    pub fn zero(&self, dst: DevPtr, bytes: usize) -> Result<(), AclError> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        self.api.memset_zero_async(dst, bytes, self.stream)
    }

    /// An `aclTensor` for `desc`, destroyed on drop.
    pub fn tensor(&self, desc: &TensorDesc) -> Result<AclTensor<'_>, AclError> {
        Ok(AclTensor { api: &*self.api, handle: self.api.create_tensor(desc)? })
    }
    /// A contiguous `aclTensor` over a whole buffer.
    pub fn tensor_of(&self, buf: &DeviceBuffer, dtype: AclDType, shape: &[usize]) -> Result<AclTensor<'_>, AclError> {
        self.tensor(&TensorDesc::contiguous(buf.ptr, dtype, shape))
    }
    /// An f32 `aclScalar`, destroyed on drop.
    pub fn scalar(&self, v: f32) -> Result<AclScalar<'_>, AclError> {
        Ok(AclScalar { api: &*self.api, handle: self.api.create_scalar_f32(v)? })
    }
    /// An `aclIntArray`, destroyed on drop.
    pub fn int_array(&self, v: &[i64]) -> Result<AclIntArray<'_>, AclError> {
        Ok(AclIntArray { api: &*self.api, handle: self.api.create_int_array(v)? })
    }

    /// The two-phase call: phase one sizes the workspace and builds the
    /// executor, the workspace comes from this stream's cache (grown when too
    /// small: the old one returns to the stream's scratch, reused only by work
    /// queued after the operators that used it, so nothing waits), then phase
    /// two enqueues the operator on the stream.
    pub fn run(&self, call: &OpCall) -> Result<(), AclError> {
        let _span = tracing::trace_span!("aclnn", op = call.name()).entered();
        self.bind()?;
        let (size, exec) = self.api.workspace_size(call)?;
        let mut cache = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        if size > 0 && cache.as_ref().is_none_or(|b| (b.len as u64) < size) {
            *cache = Some(self.scratch(size as usize)?);
        }
        let ws = if size > 0 { cache.as_ref().map_or(0, |b| b.ptr) } else { 0 };
        self.api.execute(call.name(), ws, size, exec, self.stream)
    }

    /// Bytes currently held by the workspace cache.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |b| b.len)
    }
}

impl Drop for NpuContext {
    fn drop(&mut self) {
        let _ = self.api.synchronize(self.stream);
        if let Ok(mut ws) = self.workspace.lock() {
            *ws = None;
        }
        if let Ok(mut s) = self.scratch.lock() {
            for (_, ptr) in std::mem::take(&mut s.free) {
                let _ = self.api.free(ptr);
            }
        }
        if self.owns_stream {
            let _ = self.api.destroy_stream(self.stream);
        }
        let _ = self.api.reset_device(self.device as i32);
    }
}

/// A device allocation, freed on drop.
pub struct DeviceBuffer {
    api: Arc<dyn AclApi>,
    ptr: DevPtr,
    len: usize,
    /// Bytes of the allocation (>= `len` for recycled scratch).
    capacity: usize,
    /// The scratch it returns to on drop (else it is freed).
    recycle: Option<Arc<Mutex<Scratch>>>,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.ptr, self.len)
    }
}

impl DeviceBuffer {
    /// Device address (0 for an empty buffer).
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        match &self.recycle {
            Some(s) => s.lock().unwrap_or_else(|p| p.into_inner()).free.push((self.capacity, self.ptr)),
            None => {
                let _ = self.api.free(self.ptr);
            }
        }
    }
}

/// Page-locked host memory (`aclrtMallocHost`), freed on drop. Whoever
/// uploads from it keeps it alive until the upload has run.
pub struct PinnedBuffer {
    api: Arc<dyn AclApi>,
    ptr: HostPtr,
    len: usize,
}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedBuffer({:#x}, {} bytes)", self.ptr, self.len)
    }
}

impl PinnedBuffer {
    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it holds no bytes (never: at least one is allocated).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The bytes, to write. The caller makes sure no queued upload still reads them.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live page-locked allocation of `len` bytes owned by
        // this buffer, borrowed exclusively through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        let _ = self.api.free_host(self.ptr);
    }
}

/// An `aclrtEvent` on a context's stream, destroyed on drop.
pub struct StreamEvent {
    api: Arc<dyn AclApi>,
    handle: EventHandle,
    stream: StreamHandle,
}

impl std::fmt::Debug for StreamEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamEvent({:?})", self.handle)
    }
}

impl StreamEvent {
    /// Records the event after everything queued on the stream so far.
    pub fn record(&self) -> Result<(), AclError> {
        self.api.record_event(self.handle, self.stream)
    }
    /// Whether the work queued before the last `record` has run (never waits).
    pub fn has_run(&self) -> Result<bool, AclError> {
        self.api.event_complete(self.handle)
    }
    /// Waits until the work queued before the last `record` has run: asks
    /// first (never waits when it has, the usual case) and only then blocks.
    pub fn wait(&self) -> Result<(), AclError> {
        if self.has_run()? {
            return Ok(());
        }
        self.api.synchronize_event(self.handle)
    }
}

/// Page-locked memory that asynchronous uploads read, with the event
/// recorded after its last upload: it is rewritten (by its owner, once
/// [`idle`](Self::idle)) or freed (on drop, which waits if it must) only
/// after that upload has run.
pub struct Staging {
    buf: PinnedBuffer,
    uploaded: StreamEvent,
    /// Whether `uploaded` was ever recorded.
    recorded: bool,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").field("buf", &self.buf).field("recorded", &self.recorded).finish()
    }
}

impl Staging {
    /// `bytes` of page-locked memory on `ctx`'s device, never uploaded yet.
    pub fn new(ctx: &NpuContext, bytes: usize) -> Result<Self, AclError> {
        Ok(Staging { buf: ctx.alloc_pinned(bytes)?, uploaded: ctx.event()?, recorded: false })
    }
    /// Bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether it holds no bytes (never: at least one is allocated).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Whether no upload from it is still queued (never waits).
    pub fn idle(&self) -> Result<bool, AclError> {
        Ok(!self.recorded || self.uploaded.has_run()?)
    }
    /// The bytes, to write: waits for the last upload from them first if it
    /// is still queued (call [`idle`](Self::idle) to avoid that).
    pub fn bytes_mut(&mut self) -> Result<&mut [u8], AclError> {
        if self.recorded {
            self.uploaded.wait()?;
        }
        Ok(self.buf.bytes_mut())
    }
    /// Queues a copy of its first `bytes` to `dst` on `ctx`'s stream and records the event after it.
    pub fn upload(&mut self, ctx: &NpuContext, dst: DevPtr, bytes: usize) -> Result<(), AclError> {
        ctx.upload_async(dst, &self.buf, bytes)?;
        self.uploaded.record()?;
        self.recorded = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // aclrtFreeHost under a queued copy would hand the copy freed memory.
        if self.recorded {
            let _ = self.uploaded.wait();
        }
    }
}

impl Drop for StreamEvent {
    fn drop(&mut self) {
        let _ = self.api.destroy_event(self.handle);
    }
}

/// An `aclTensor`, destroyed on drop.
pub struct AclTensor<'a> {
    api: &'a dyn AclApi,
    handle: TensorHandle,
}
impl AclTensor<'_> {
    /// The handle.
    pub fn h(&self) -> TensorHandle {
        self.handle
    }
}
impl Drop for AclTensor<'_> {
    fn drop(&mut self) {
        self.api.destroy_tensor(self.handle);
    }
}

/// An `aclScalar`, destroyed on drop.
pub struct AclScalar<'a> {
    api: &'a dyn AclApi,
    handle: ScalarHandle,
}
impl AclScalar<'_> {
    /// The handle.
    pub fn h(&self) -> ScalarHandle {
        self.handle
    }
}
impl Drop for AclScalar<'_> {
    fn drop(&mut self) {
        self.api.destroy_scalar(self.handle);
    }
}

/// An `aclIntArray`, destroyed on drop.
pub struct AclIntArray<'a> {
    api: &'a dyn AclApi,
    handle: IntArrayHandle,
}
impl AclIntArray<'_> {
    /// The handle.
    pub fn h(&self) -> IntArrayHandle {
        self.handle
    }
}
impl Drop for AclIntArray<'_> {
    fn drop(&mut self) {
        self.api.destroy_int_array(self.handle);
    }
}
