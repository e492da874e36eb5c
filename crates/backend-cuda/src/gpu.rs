//! The GPU side: device memory through cudarc, NVRTC-compiled modules cached
//! per device and architecture, and kernel launches.

use crate::args::KernelArgs;
use crate::kernels::Kernel;
use crate::launcher::{sealed, Launcher};
use crate::nvrtc;
use cudarc::driver::{
    result as dres, sys as dsys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};
use deltanet_core::memory::check_range;
use deltanet_core::{Device, DeviceMemory, Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

fn dev_err(op: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device { backend: "cuda".into(), op: op.into(), message: format!("{e:?}") }
}

/// Checks, without panicking, that the CUDA driver library loads and has at
/// least one device; returns the device count. For `deltanet info`.
pub fn probe() -> std::result::Result<usize, String> {
    // SAFETY: only tries to dlopen libcuda by its candidate names.
    if !unsafe { dsys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) was not found".into());
    }
    let n = CudaContext::device_count().map_err(|e| format!("cuInit/cuDeviceGetCount failed: {e:?}"))?;
    if n <= 0 {
        return Err("no CUDA device".into());
    }
    Ok(n as usize)
}

/// An allocation on the GPU (exact byte length kept beside the slice).
#[derive(Debug)]
pub struct CudaBuffer {
    slice: CudaSlice<u8>,
    len: usize,
}

/// Device memory of one GPU, on one stream.
#[derive(Debug, Clone)]
pub struct CudaMemory {
    stream: Arc<CudaStream>,
    ordinal: usize,
}

impl CudaMemory {
    fn ptr(&self, buf: &CudaBuffer) -> u64 {
        let (p, _sync) = buf.slice.device_ptr(&self.stream);
        p
    }
    /// The stream every operation runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl DeviceMemory for CudaMemory {
    type Buffer = CudaBuffer;

    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<CudaBuffer> {
        let slice = self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(|e| match e {
            // The same typed error as host memory, so a caller sizing a pool can tell "too big" from a fault.
            dres::DriverError(dsys::CUresult::CUDA_ERROR_OUT_OF_MEMORY) => Error::OutOfMemory { bytes },
            e => dev_err("alloc", e),
        })?;
        Ok(CudaBuffer { slice, len: bytes })
    }
    fn len(&self, buf: &CudaBuffer) -> usize {
        buf.len
    }
    fn addr(&self, buf: &CudaBuffer) -> u64 {
        self.ptr(buf)
    }
    fn copy_within(&self, buf: &mut CudaBuffer, src: usize, dst: usize, bytes: usize) -> Result<()> {
        check_range(buf.len, src, bytes)?;
        check_range(buf.len, dst, bytes)?;
        let base = self.ptr(buf);
        // SAFETY: both ranges lie inside the allocation (checked), on this stream.
        unsafe { dres::memcpy_dtod_async(base + dst as u64, base + src as u64, bytes, self.stream.cu_stream()) }
            .map_err(|e| dev_err("copy", e))
    }
    fn copy_between(&self, src: &CudaBuffer, src_off: usize, dst: &mut CudaBuffer, dst_off: usize, bytes: usize) -> Result<()> {
        check_range(src.len, src_off, bytes)?;
        check_range(dst.len, dst_off, bytes)?;
        let (s, d) = (self.ptr(src), self.ptr(dst));
        // SAFETY: both ranges lie inside their allocations (checked), on this stream.
        unsafe { dres::memcpy_dtod_async(d + dst_off as u64, s + src_off as u64, bytes, self.stream.cu_stream()) }
            .map_err(|e| dev_err("copy", e))
    }
    fn zero(&self, buf: &mut CudaBuffer, off: usize, bytes: usize) -> Result<()> {
        check_range(buf.len, off, bytes)?;
        let base = self.ptr(buf);
        // SAFETY: the range lies inside the allocation (checked), on this stream.
        unsafe { dres::memset_d8_async(base + off as u64, 0, bytes, self.stream.cu_stream()) }.map_err(|e| dev_err("memset", e))
    }
    fn read(&self, buf: &CudaBuffer, off: usize, dst: &mut [u8]) -> Result<()> {
        check_range(buf.len, off, dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_dtoh(&buf.slice.slice(off..off + dst.len()), dst).map_err(|e| dev_err("read", e))?;
        self.stream.synchronize().map_err(|e| dev_err("synchronize", e))
    }
    fn write(&self, buf: &mut CudaBuffer, off: usize, src: &[u8]) -> Result<()> {
        check_range(buf.len, off, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        let mut view = buf.slice.slice_mut(off..off + src.len());
        self.stream.memcpy_htod(src, &mut view).map_err(|e| dev_err("write", e))?;
        self.stream.synchronize().map_err(|e| dev_err("synchronize", e))
    }
}

type ModuleKey = (usize, i32, i32);
/// A module compiled once (or the compile error, kept so it is reported every time).
type ModuleSlot = Arc<OnceLock<std::result::Result<Arc<CudaModule>, String>>>;
type ModuleCache = Mutex<HashMap<ModuleKey, ModuleSlot>>;

/// Compiled modules, one per (device ordinal, compute capability), compiled once.
fn module_cache() -> &'static ModuleCache {
    static CACHE: OnceLock<ModuleCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Launches on a real GPU (the dispatcher's default launcher; built by [`CudaDispatcher::new`](crate::CudaDispatcher::new)).
#[derive(Debug)]
pub struct GpuLauncher {
    memory: CudaMemory,
    functions: HashMap<Kernel, CudaFunction>,
    name: String,
    arch: (i32, i32),
}

/// Which stream a [`GpuLauncher`] queues its work on.
pub(crate) enum StreamChoice {
    /// The context's default stream.
    Default,
    /// A cudarc stream of the engine's.
    Cudarc(Arc<CudaStream>),
    /// A raw `CUstream` of the engine's (borrowed: the engine keeps it alive).
    Raw(dsys::CUstream),
}

// SAFETY: a `CUstream` is a handle the driver accepts from any thread; the
// engine that handed it over keeps it alive (the contract of `on_raw_stream`).
unsafe impl Send for StreamChoice {}

impl GpuLauncher {
    /// Opens device `ordinal` and compiles (or fetches from the cache) the kernels
    /// for its architecture; work is queued on `stream`. `Unavailable` when the
    /// driver, NVRTC or the device is missing.
    pub(crate) fn new(ordinal: usize, stream: StreamChoice) -> Result<Self> {
        let unavailable = |reason: String| Error::Unavailable { backend: "cuda".into(), reason };
        let count = probe().map_err(unavailable)?;
        if ordinal >= count {
            return Err(unavailable(format!("no device {ordinal} ({count} present)")));
        }
        if !nvrtc::load() {
            return Err(unavailable(format!("{} (needed to compile the kernels)", nvrtc::WHERE)));
        }
        let ctx = match &stream {
            StreamChoice::Cudarc(s) => s.context().clone(),
            _ => CudaContext::new(ordinal).map_err(|e| unavailable(format!("device {ordinal}: {e:?}")))?,
        };
        let arch = ctx.compute_capability().map_err(|e| dev_err("compute capability", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let slot = module_cache().lock().unwrap_or_else(|p| p.into_inner()).entry((ordinal, arch.0, arch.1)).or_default().clone();
        let module = slot
            .get_or_init(|| {
                let c = nvrtc::compile(&format!("sm_{}{}", arch.0, arch.1), &[])?;
                tracing::debug!(ordinal, ?arch, nvrtc = ?nvrtc::nvrtc_version(), log = %c.log, "compiled the kernels with NVRTC");
                ctx.load_module(cudarc::nvrtc::Ptx::from_binary(c.cubin)).map_err(|e| format!("cuModuleLoadData: {e:?}"))
            })
            .clone()
            .map_err(|e| dev_err("compile kernels", e))?;
        let mut functions = HashMap::new();
        for k in Kernel::ALL {
            functions.insert(k, module.load_function(k.name()).map_err(|e| dev_err("load function", e))?);
        }
        let stream = match stream {
            StreamChoice::Default => ctx.default_stream(),
            StreamChoice::Cudarc(s) => s,
            // SAFETY: the caller of `CudaDispatcher::on_raw_stream` promised a
            // live stream of this device's primary context that outlives the
            // dispatcher; all our work on it is queued in order on it.
            StreamChoice::Raw(raw) => unsafe { ctx.wrap_borrowed_stream(raw) },
        };
        Ok(GpuLauncher { memory: CudaMemory { stream, ordinal }, functions, name, arch })
    }

    /// Device name and compute capability.
    pub(crate) fn device_info(&self) -> (String, (i32, i32)) {
        (self.name.clone(), self.arch)
    }
}

impl sealed::Sealed for GpuLauncher {}

impl Launcher for GpuLauncher {
    type Memory = CudaMemory;
    type Staging = PinnedHostSlice<u8>;

    fn memory(&self) -> &CudaMemory {
        &self.memory
    }
    fn backend(&self) -> &'static str {
        "cuda"
    }
    fn tensor_cores(&self) -> bool {
        self.arch.0 >= 8
    }
    fn block_threads(&self, kernel: Kernel) -> u32 {
        match kernel {
            Kernel::Recurrent | Kernel::Replay | Kernel::ExtendTc => 128,
            _ => 256,
        }
    }
    fn launch<A: KernelArgs>(&self, grid: (u32, u32, u32), block: u32, args: &A) -> Result<()> {
        let kernel = A::KERNEL;
        let f = &self.functions[&kernel];
        let stream = &self.memory.stream;
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        let mut b = stream.launch_builder(f);
        b.arg(args);
        // SAFETY: the kernel takes exactly one argument, its struct `A` by value
        // (`A::KERNEL` picked the function; NVRTC checked the layout), copied
        // into the launch at this call. The addresses in it were made by the
        // dispatcher from live buffers and validated views; the work is queued
        // on the stream, so the buffers must outlive it there: pool and plan
        // buffers are freed stream-ordered, and the engine owns its tensors'
        // lifetime on its stream (as for any kernel it queues).
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| dev_err(kernel.name(), e))
    }
    fn alloc_device(&self, bytes: usize) -> Result<CudaBuffer> {
        self.memory.alloc_zeroed(bytes)
    }
    fn alloc_staging(&self, bytes: usize) -> Result<PinnedHostSlice<u8>> {
        // SAFETY: the bytes are left unset; every byte is written by the plan
        // (`staging_mut`) before the first upload reads it.
        unsafe { self.memory.stream.context().alloc_pinned::<u8>(bytes.max(1)) }.map_err(|e| dev_err("alloc pinned", e))
    }
    fn staging_mut<'s>(&self, staging: &'s mut PinnedHostSlice<u8>) -> Result<&'s mut [u8]> {
        staging.as_mut_slice().map_err(|e| dev_err("staging", e))
    }
    fn upload(&self, staging: &PinnedHostSlice<u8>, dst: &mut CudaBuffer) -> Result<()> {
        check_range(dst.slice.len(), 0, staging.len())?;
        let mut view = dst.slice.slice_mut(0..staging.len());
        self.memory.stream.memcpy_htod(staging, &mut view).map_err(|e| dev_err("upload", e))
    }
}
