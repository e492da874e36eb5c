//! The recording function table: "device" memory is host memory (so copies
//! really move bytes and can be checked), every descriptor and operator call
//! is recorded with its full tensor contract, and int32 index tables are
//! captured at call time. Operators compute nothing, unless the recorder
//! was made with [`Recorder::evaluating`]: then each operator is also
//! evaluated on the host memory (`evaluate.rs`).
//!
//! Every operator call's argument list is checked against the parameter list
//! of its FFI type, read from `src/sys/bindings.rs` itself: names, order and
//! kinds must agree, so the names the contract tests look tensors up by are
//! the bindings' names, and the tensors an operator may write are the ones
//! the bindings declare `*mut aclTensor`.

use crate::api::{
    AclApi, AclDType, Arg, DevPtr, EventHandle, ExecutorHandle, HostPtr, IntArrayHandle, OpCall, ScalarHandle, StreamHandle, TensorDesc,
    TensorHandle,
};
use crate::result::AclError;
use std::collections::HashMap;
use std::sync::Mutex;

/// One recorded operator call.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The operator's name (`aclnnXxx`).
    pub op: &'static str,
    /// The call as the dispatcher made it.
    pub call: OpCall,
    /// Every tensor argument by its bindings name, with its descriptor (`None`: omitted optional).
    pub tensors: Vec<(&'static str, Option<TensorDesc>)>,
    /// The tensor parameters the bindings declare `*mut aclTensor` (written by the operator).
    pub written: Vec<&'static str>,
    /// Contents of every int32 tensor argument at call time.
    pub ints: HashMap<&'static str, Vec<i32>>,
    /// Values of the scalar arguments, in argument order.
    pub scalars: Vec<f32>,
}

impl Recorded {
    /// The descriptor of tensor argument `name`; panics when absent or omitted.
    pub fn t(&self, name: &str) -> TensorDesc {
        self.tensors
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.op))
    }
    /// The descriptor of tensor argument `name`, `None` when omitted.
    pub fn opt(&self, name: &str) -> Option<TensorDesc> {
        self.tensors.iter().find(|(n, _)| *n == name).and_then(|(_, d)| d.clone())
    }
    /// The int32 contents of tensor argument `name` at call time; panics when absent.
    pub fn ints(&self, name: &str) -> Vec<i32> {
        self.ints.get(name).cloned().unwrap_or_else(|| panic!("{}: no int32 tensor {name}", self.op))
    }
}

/// `(name, type)` of every parameter of the fn type `ty` in `src/sys/bindings.rs`, read from its source.
pub fn ffi_params(ty: &str) -> Vec<(String, String)> {
    const SRC: &str = include_str!("../sys/bindings.rs");
    let head = format!("pub type {ty} = unsafe extern \"C\" fn(");
    let start = SRC.find(&head).unwrap_or_else(|| panic!("no `{head}` in bindings.rs")) + head.len();
    let end = start + SRC[start..].find(") -> ").unwrap_or_else(|| panic!("{ty}: no `) -> `"));
    SRC[start..end]
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, t) = p.split_once(':').unwrap_or_else(|| panic!("{ty}: parameter `{p}` has no type"));
            (n.trim().to_string(), t.trim().to_string())
        })
        .collect()
}

/// Checks an operator's argument list against the bindings' parameter list
/// (all but the trailing `workspaceSize, executor`) and returns, per
/// argument, whether the bindings declare it a written (`*mut`) tensor.
pub fn check_args(ty: &str, args: &[(&'static str, Arg)]) -> Result<Vec<bool>, String> {
    let params = ffi_params(ty);
    let n = params.len().checked_sub(2).ok_or(format!("{ty}: fewer than 2 parameters"))?;
    let tail: Vec<(&str, &str)> = params[n..].iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    if tail != [("workspaceSize", "*mut u64"), ("executor", "*mut *mut aclOpExecutor")] {
        return Err(format!("{ty}: does not end in `workspaceSize, executor`: {tail:?}"));
    }
    if args.len() != n {
        return Err(format!("{ty}: {} arguments, the bindings take {n} before workspaceSize", args.len()));
    }
    let mut written = Vec::new();
    for (i, ((name, arg), (pn, pt))) in args.iter().zip(&params[..n]).enumerate() {
        if name != pn {
            return Err(format!("{ty}: argument {i} is `{name}`, the bindings' parameter is `{pn}`"));
        }
        let fits = match arg {
            Arg::Tensor(_) => pt == "*const aclTensor" || pt == "*mut aclTensor",
            Arg::Scalar(_) => pt == "*const aclScalar",
            Arg::F32(_) => pt == "f32",
            Arg::F64(_) => pt == "f64",
            Arg::I64(_) => pt == "i64",
            Arg::DType(_) => pt == "aclDataType",
            Arg::Str(_) => pt == "*const c_char",
        };
        if !fits {
            return Err(format!("{ty}: argument {i} `{name}` is {arg:?}, the bindings' parameter is `{pt}`"));
        }
        written.push(pt == "*mut aclTensor");
    }
    Ok(written)
}

/// Everything the stand-in saw, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// An operator's first phase.
    Call(Box<Recorded>),
    /// `aclrtMemcpyAsync` device to device.
    Copy {
        /// Destination.
        dst: DevPtr,
        /// Source.
        src: DevPtr,
        /// Length.
        bytes: usize,
    },
    /// `aclrtMemsetAsync` to zero.
    Zero {
        /// Destination.
        dst: DevPtr,
        /// Length.
        bytes: usize,
    },
    /// `aclrtMemcpyAsync` host to device, from page-locked memory.
    Upload {
        /// Destination.
        dst: DevPtr,
        /// Page-locked source.
        src: HostPtr,
        /// Length.
        bytes: usize,
    },
    /// A wait of the host for the device: `aclrtSynchronizeStream` or `aclrtSynchronizeEvent`.
    Sync,
}

/// What the stand-in counted since its creation (compare two snapshots for a step).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Device allocations (`aclrtMalloc`).
    pub device_allocs: usize,
    /// Page-locked host allocations (`aclrtMallocHost`).
    pub host_allocs: usize,
    /// Host-to-device copies, synchronous (`aclrtMemcpy`) or asynchronous (`aclrtMemcpyAsync`).
    pub uploads: usize,
    /// Waits of the host for the device (stream or event synchronisation).
    pub host_syncs: usize,
    /// Operator calls (first phases).
    pub operator_calls: usize,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            device_allocs: self.device_allocs - o.device_allocs,
            host_allocs: self.host_allocs - o.host_allocs,
            uploads: self.uploads - o.uploads,
            host_syncs: self.host_syncs - o.host_syncs,
            operator_calls: self.operator_calls - o.operator_calls,
        }
    }
}

#[derive(Default)]
struct State {
    next: usize,
    allocs: HashMap<DevPtr, Vec<u64>>,
    alloc_len: HashMap<DevPtr, usize>,
    tensors: HashMap<usize, TensorDesc>,
    scalars: HashMap<usize, f32>,
    arrays: HashMap<usize, Vec<i64>>,
    events: Vec<Event>,
    workspace_requests: Vec<u64>,
    /// `aclrtSetDevice` calls per OS thread.
    set_device: Vec<std::thread::ThreadId>,
    /// Calls between their two phases, by executor handle (evaluating recorders only).
    pending: HashMap<usize, Recorded>,
    /// `aclrtMalloc` calls so far.
    mallocs: usize,
    /// Synchronous host-to-device copies (`aclrtMemcpy`) so far.
    uploads: usize,
    /// Page-locked host allocations (address → bytes), standing in for `aclrtMallocHost`.
    host: HashMap<HostPtr, Vec<u64>>,
    host_len: HashMap<HostPtr, usize>,
    /// Everything counted so far.
    counts: Counts,
    /// Live events.
    events_live: std::collections::HashSet<usize>,
    /// Whether work queued from now on counts as still queued ([`Recorder::hold_queue`]).
    holding: bool,
    /// Events recorded while holding: not complete until a host wait.
    events_pending: std::collections::HashSet<usize>,
}

/// The recording function table over host memory (see the module docs).
pub struct Recorder {
    soc: String,
    devices: u32,
    evaluate: bool,
    st: Mutex<State>,
}

impl Recorder {
    /// A stand-in reporting SoC `soc` and one device.
    pub fn new(soc: &str) -> Self {
        Recorder { soc: soc.into(), devices: 1, evaluate: false, st: Mutex::new(State { next: 0x1000, ..Default::default() }) }
    }
    /// As [`new`](Self::new), and every operator is evaluated on the host
    /// memory in its second phase, so outputs and states hold real values.
    pub fn evaluating(soc: &str) -> Self {
        Recorder { evaluate: true, ..Recorder::new(soc) }
    }
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap()
    }
    /// Everything seen since creation or the last [`clear`](Self::clear), in order.
    pub fn events(&self) -> Vec<Event> {
        self.st().events.clone()
    }
    /// Forgets the recorded events.
    pub fn clear(&self) {
        self.st().events.clear();
    }
    /// The recorded operator calls, in order.
    pub fn calls(&self) -> Vec<Recorded> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Call(r) => Some(*r),
                _ => None,
            })
            .collect()
    }
    /// `aclTensor`s created and not yet destroyed.
    pub fn live_tensors(&self) -> usize {
        self.st().tensors.len()
    }
    /// `aclrtMalloc` calls since creation.
    pub fn mallocs(&self) -> usize {
        self.st().mallocs
    }
    /// Synchronous host-to-device copies since creation.
    pub fn uploads(&self) -> usize {
        self.st().uploads
    }
    /// While `hold`, every event recorded counts as still queued (its query
    /// says not complete) until the host waits for it or for the stream, as
    /// on a device that is behind the host. The stand-in still moves the bytes
    /// when work is queued, so this models only what the host is told.
    /// Ending the hold lets the device catch up: every such event completes.
    pub fn hold_queue(&self, hold: bool) {
        let mut st = self.st();
        st.holding = hold;
        if !hold {
            st.events_pending.clear();
        }
    }
    /// Allocations, uploads, host waits and operator calls since creation.
    pub fn counts(&self) -> Counts {
        self.st().counts
    }
    /// Page-locked host allocations not yet freed.
    pub fn live_host_allocs(&self) -> usize {
        self.st().host.len()
    }
    /// Device allocations not yet freed.
    pub fn live_allocs(&self) -> usize {
        self.st().allocs.len()
    }
    /// The OS thread of every `aclrtSetDevice` call, in order.
    pub fn set_device_threads(&self) -> Vec<std::thread::ThreadId> {
        self.st().set_device.clone()
    }
    /// The workspace size every first phase asked for, in order.
    pub fn workspace_requests(&self) -> Vec<u64> {
        self.st().workspace_requests.clone()
    }
    /// Panics unless `[addr, addr+bytes)` lies in one live allocation.
    fn check_in_alloc(st: &State, addr: DevPtr, bytes: usize, what: &str) {
        let ok = st.alloc_len.iter().any(|(&a, &len)| addr >= a && addr + bytes as u64 <= a + len as u64);
        assert!(ok, "{what}: range {addr:#x}+{bytes} is outside every live device allocation");
    }
    fn read_i32(st: &State, d: &TensorDesc) -> Vec<i32> {
        let n = d.shape.iter().product::<i64>() as usize;
        Self::check_in_alloc(st, d.addr, n * 4, "int32 tensor");
        // SAFETY: checked to lie inside a live host allocation standing in for device memory.
        let s = unsafe { std::slice::from_raw_parts(d.addr as *const i32, n) };
        s.to_vec()
    }
}

impl AclApi for Recorder {
    fn init(&self) -> Result<String, AclError> {
        Ok(self.soc.clone())
    }
    fn device_count(&self) -> Result<u32, AclError> {
        Ok(self.devices)
    }
    fn set_device(&self, _device: i32) -> Result<(), AclError> {
        self.st().set_device.push(std::thread::current().id());
        Ok(())
    }
    fn reset_device(&self, _device: i32) -> Result<(), AclError> {
        Ok(())
    }
    fn create_stream(&self) -> Result<StreamHandle, AclError> {
        Ok(StreamHandle(0x5))
    }
    fn destroy_stream(&self, _stream: StreamHandle) -> Result<(), AclError> {
        Ok(())
    }
    fn synchronize(&self, _stream: StreamHandle) -> Result<(), AclError> {
        let mut st = self.st();
        st.events_pending.clear();
        st.counts.host_syncs += 1;
        st.events.push(Event::Sync);
        Ok(())
    }
    fn malloc(&self, bytes: usize) -> Result<DevPtr, AclError> {
        let mut st = self.st();
        // Fallible like aclrtMalloc: a host allocation the stand-in cannot make
        // is the runtime's allocation error, never an abort.
        let mut v = Vec::new();
        v.try_reserve_exact(bytes.div_ceil(8))
            .map_err(|_| AclError::Runtime { call: "aclrtMalloc".into(), code: crate::sys::bindings::ACL_ERROR_RT_MEMORY_ALLOCATION })?;
        v.resize(bytes.div_ceil(8), 0xA5A5_A5A5_A5A5_A5A5u64);
        let p = v.as_ptr() as DevPtr;
        st.mallocs += 1;
        st.counts.device_allocs += 1;
        st.allocs.insert(p, v);
        st.alloc_len.insert(p, bytes);
        Ok(p)
    }
    fn free(&self, ptr: DevPtr) -> Result<(), AclError> {
        let mut st = self.st();
        assert!(st.allocs.remove(&ptr).is_some(), "free of unknown pointer {ptr:#x}");
        st.alloc_len.remove(&ptr);
        Ok(())
    }
    fn memcpy_d2d_async(&self, dst: DevPtr, src: DevPtr, bytes: usize, _stream: StreamHandle) -> Result<(), AclError> {
        let mut st = self.st();
        Self::check_in_alloc(&st, dst, bytes, "memcpy dst");
        Self::check_in_alloc(&st, src, bytes, "memcpy src");
        // SAFETY: both ranges lie in live host allocations (checked); `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        st.events.push(Event::Copy { dst, src, bytes });
        Ok(())
    }
    fn memset_zero_async(&self, dst: DevPtr, bytes: usize, _stream: StreamHandle) -> Result<(), AclError> {
        let mut st = self.st();
        Self::check_in_alloc(&st, dst, bytes, "memset");
        // SAFETY: the range lies in a live host allocation (checked).
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        st.events.push(Event::Zero { dst, bytes });
        Ok(())
    }
    fn malloc_host(&self, bytes: usize) -> Result<HostPtr, AclError> {
        let mut st = self.st();
        let mut v = Vec::new();
        v.try_reserve_exact(bytes.div_ceil(8))
            .map_err(|_| AclError::Runtime { call: "aclrtMallocHost".into(), code: crate::sys::bindings::ACL_ERROR_BAD_ALLOC })?;
        v.resize(bytes.div_ceil(8), 0x5A5A_5A5A_5A5A_5A5Au64);
        let p = v.as_ptr() as HostPtr;
        st.counts.host_allocs += 1;
        st.host.insert(p, v);
        st.host_len.insert(p, bytes);
        Ok(p)
    }
    fn free_host(&self, ptr: HostPtr) -> Result<(), AclError> {
        let mut st = self.st();
        assert!(st.host.remove(&ptr).is_some(), "aclrtFreeHost of unknown pointer {ptr:#x}");
        st.host_len.remove(&ptr);
        Ok(())
    }
    fn memcpy_h2d_async(&self, dst: DevPtr, src: HostPtr, bytes: usize, _stream: StreamHandle) -> Result<(), AclError> {
        let mut st = self.st();
        Self::check_in_alloc(&st, dst, bytes, "h2d async dst");
        // The documented contract: an asynchronous upload reads page-locked memory.
        let pinned = st.host_len.iter().any(|(&a, &len)| src >= a && src + bytes <= a + len);
        assert!(pinned, "aclrtMemcpyAsync(H2D): source {src:#x}+{bytes} is not page-locked memory from aclrtMallocHost");
        // The stream runs in order and at once here: the copy happens when queued.
        // SAFETY: both ranges lie in live host allocations (checked).
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
        st.counts.uploads += 1;
        st.events.push(Event::Upload { dst, src, bytes });
        Ok(())
    }
    fn create_event(&self) -> Result<EventHandle, AclError> {
        let mut st = self.st();
        st.next += 1;
        let h = st.next;
        st.events_live.insert(h);
        Ok(EventHandle(h))
    }
    fn destroy_event(&self, event: EventHandle) -> Result<(), AclError> {
        let mut st = self.st();
        assert!(!st.events_pending.contains(&event.0), "destroy of event {event:?} before the host waited for it");
        assert!(st.events_live.remove(&event.0), "destroy of unknown event {event:?}");
        Ok(())
    }
    fn record_event(&self, event: EventHandle, _stream: StreamHandle) -> Result<(), AclError> {
        let mut st = self.st();
        assert!(st.events_live.contains(&event.0), "record of unknown event {event:?}");
        if st.holding {
            st.events_pending.insert(event.0);
        } else {
            st.events_pending.remove(&event.0);
        }
        Ok(())
    }
    fn event_complete(&self, event: EventHandle) -> Result<bool, AclError> {
        let st = self.st();
        assert!(st.events_live.contains(&event.0), "query of unknown event {event:?}");
        // Queued work runs at once here: a recorded event has completed unless held.
        Ok(!st.events_pending.contains(&event.0))
    }
    fn synchronize_event(&self, event: EventHandle) -> Result<(), AclError> {
        let mut st = self.st();
        assert!(st.events_live.contains(&event.0), "synchronize of unknown event {event:?}");
        st.events_pending.remove(&event.0);
        st.counts.host_syncs += 1;
        st.events.push(Event::Sync);
        Ok(())
    }
    fn memcpy_h2d(&self, dst: DevPtr, src: &[u8]) -> Result<(), AclError> {
        let mut st = self.st();
        st.uploads += 1;
        st.counts.uploads += 1;
        Self::check_in_alloc(&st, dst, src.len(), "h2d");
        // SAFETY: the range lies in a live host allocation (checked).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn memcpy_d2h(&self, dst: &mut [u8], src: DevPtr) -> Result<(), AclError> {
        let st = self.st();
        Self::check_in_alloc(&st, src, dst.len(), "d2h");
        // SAFETY: the range lies in a live host allocation (checked).
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn create_tensor(&self, desc: &TensorDesc) -> Result<TensorHandle, AclError> {
        let mut st = self.st();
        Self::check_in_alloc(&st, desc.addr, desc.span() as usize * desc.dtype.size(), "aclCreateTensor");
        st.next += 1;
        let h = st.next;
        st.tensors.insert(h, desc.clone());
        Ok(TensorHandle(h))
    }
    fn destroy_tensor(&self, t: TensorHandle) {
        assert!(self.st().tensors.remove(&t.0).is_some(), "double destroy of tensor {t:?}");
    }
    fn create_scalar_f32(&self, v: f32) -> Result<ScalarHandle, AclError> {
        let mut st = self.st();
        st.next += 1;
        let h = st.next;
        st.scalars.insert(h, v);
        Ok(ScalarHandle(h))
    }
    fn destroy_scalar(&self, s: ScalarHandle) {
        assert!(self.st().scalars.remove(&s.0).is_some());
    }
    fn create_int_array(&self, v: &[i64]) -> Result<IntArrayHandle, AclError> {
        let mut st = self.st();
        st.next += 1;
        let h = st.next;
        st.arrays.insert(h, v.to_vec());
        Ok(IntArrayHandle(h))
    }
    fn destroy_int_array(&self, a: IntArrayHandle) {
        assert!(self.st().arrays.remove(&a.0).is_some());
    }
    fn workspace_size(&self, call: &OpCall) -> Result<(u64, ExecutorHandle), AclError> {
        let mut st = self.st();
        let args = call.args();
        let writes = check_args(call.ffi_type(), &args).unwrap_or_else(|e| panic!("{e}"));
        let mut tensors = Vec::new();
        let mut written = Vec::new();
        let mut ints = HashMap::new();
        for ((name, arg), w) in args.iter().zip(writes) {
            let Arg::Tensor(h) = *arg else { continue };
            let d = h.map(|h| st.tensors.get(&h.0).unwrap_or_else(|| panic!("{}: {name} is not a live tensor", call.name())).clone());
            if let Some(d) = &d {
                if d.dtype == AclDType::I32 {
                    ints.insert(*name, Self::read_i32(&st, d));
                }
            }
            if w {
                written.push(*name);
            }
            tensors.push((*name, d));
        }
        if matches!(
            call,
            OpCall::ChunkGatedDeltaRule { .. }
                | OpCall::RecurrentGatedDeltaRule { .. }
                | OpCall::CausalConv1dFn { .. }
                | OpCall::CausalConv1dUpdate { .. }
        ) {
            // The GDN/conv operators update in place only through their `*Ref`
            // parameters: no read-only (`const`) tensor may share memory with
            // one the operator writes.
            for (wn, wd) in tensors.iter().filter(|(n, _)| written.contains(n)) {
                for (rn, rd) in tensors.iter().filter(|(n, _)| !written.contains(n)) {
                    if let (Some(w), Some(r)) = (wd, rd) {
                        let (w0, w1) = (w.addr, w.addr + (w.span() as usize * w.dtype.size()) as u64);
                        let (r0, r1) = (r.addr, r.addr + (r.span() as usize * r.dtype.size()) as u64);
                        assert!(w1 <= r0 || r1 <= w0, "{}: written {wn} overlaps read-only {rn}", call.name());
                    }
                }
            }
        }
        let scalar = |h: ScalarHandle, st: &State| *st.scalars.get(&h.0).expect("live scalar");
        let scalars = match *call {
            OpCall::Add { alpha, .. } => vec![scalar(alpha, &st)],
            OpCall::Softplus { beta, threshold, .. } => vec![scalar(beta, &st), scalar(threshold, &st)],
            _ => vec![],
        };
        // Workspace sizes that vary by operator, so the cache has to grow.
        let ws = match call {
            OpCall::ChunkGatedDeltaRule { .. } => 4096,
            OpCall::RecurrentGatedDeltaRule { .. } => 2048,
            OpCall::CausalConv1dFn { .. } | OpCall::CausalConv1dUpdate { .. } => 1024,
            _ => 0,
        };
        st.workspace_requests.push(ws);
        st.counts.operator_calls += 1;
        let recorded = Recorded { op: call.name(), call: call.clone(), tensors, written, ints, scalars };
        let exec = if self.evaluate {
            st.next += 1;
            let h = st.next;
            st.pending.insert(h, recorded.clone());
            h
        } else {
            0xE
        };
        st.events.push(Event::Call(Box::new(recorded)));
        Ok((ws, ExecutorHandle(exec)))
    }
    fn execute(
        &self,
        _op: &'static str,
        workspace: DevPtr,
        size: u64,
        exec: ExecutorHandle,
        _stream: StreamHandle,
    ) -> Result<(), AclError> {
        let mut st = self.st();
        if size > 0 {
            Self::check_in_alloc(&st, workspace, size as usize, "workspace");
        }
        if let Some(call) = st.pending.remove(&exec.0) {
            super::evaluate::evaluate(&super::evaluate::Host { allocs: &st.alloc_len }, &call);
        }
        Ok(())
    }
}
