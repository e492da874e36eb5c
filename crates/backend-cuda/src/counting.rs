//! A launcher that counts what the dispatcher asks of the device: the proof,
//! without a GPU, that a step through a plan uploads its tables once,
//! allocates nothing and never waits for the device. It runs the kernels in
//! the emulation (as `EmuLauncher`) on [`CountingMemory`], host memory that
//! counts every allocation, transfer and device-side copy made through it —
//! the pool's and the layer workspace's included, not only the dispatcher's.
//! Like a CUDA stream, it can also capture the launches it is given into an
//! [`EmuGraph`] that replays them with the same arguments (the same device
//! addresses): what a captured step relies on, checked without a GPU.

use crate::args::KernelArgs;
use crate::kernels::Kernel;
use crate::launcher::{sealed, Launcher};
use deltanet_core::{Device, DeviceMemory, HostBuffer, HostMemory, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What was asked of the device, counted since the counters were made (or
/// [`Counter::take`]n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Device allocations (pool, workspaces, plans) and staging allocations.
    pub allocations: u64,
    /// Plan uploads: one asynchronous copy of a plan's staged tables.
    pub uploads: u64,
    /// Other host-to-device writes (pool imports, engine tensors).
    pub writes: u64,
    /// Waits of the host for the device: every device-to-host read waits for the stream.
    pub host_syncs: u64,
    /// Device-side copies and fills (pool copies, commits through the pool).
    pub device_copies: u64,
    /// Kernel launches, by kernel name (`dnk_*`).
    pub launches: BTreeMap<&'static str, u64>,
}

impl Counts {
    /// All launches.
    pub fn total_launches(&self) -> u64 {
        self.launches.values().sum()
    }
}

/// One launch as captured: the kernel, its shape and its argument bytes.
#[derive(Debug, Clone)]
struct CapturedLaunch {
    name: &'static str,
    grid: (u32, u32, u32),
    block: u32,
    args: Vec<u8>,
}

/// Launches captured by [`Counter::begin_capture`] .. [`Counter::end_capture`],
/// replayed with the very argument bytes they were captured with.
#[derive(Debug, Clone)]
pub struct EmuGraph {
    launches: Vec<CapturedLaunch>,
}

impl EmuGraph {
    /// Runs every captured launch again, in order.
    pub fn launch(&self) -> Result<()> {
        for l in &self.launches {
            crate::emu::launch_bytes(l.name, l.grid, l.block, &l.args)?;
        }
        Ok(())
    }
    /// Launches captured.
    pub fn len(&self) -> usize {
        self.launches.len()
    }
    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.launches.is_empty()
    }
}

#[derive(Debug, Default)]
struct Shared {
    counts: Counts,
    capture: Option<Vec<CapturedLaunch>>,
}

/// Shared counters of one [`CountingLauncher`] and its memory.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<Mutex<Shared>>);

impl Counter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn bump(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.lock().counts);
    }
    /// The counts so far.
    pub fn get(&self) -> Counts {
        self.lock().counts.clone()
    }
    /// The counts so far, resetting them to zero.
    pub fn take(&self) -> Counts {
        std::mem::take(&mut self.lock().counts)
    }
    /// Starts capturing launches (they still run, as the emulation has no queue to defer them to).
    pub fn begin_capture(&self) {
        self.lock().capture = Some(Vec::new());
    }
    /// Ends the capture. Like a CUDA stream capture, it fails when anything
    /// but a launch reached the device in between (an allocation, an upload,
    /// a write, a device copy or a host wait): a graph replays launches only.
    pub fn end_capture(&self, since: &Counts) -> Result<EmuGraph> {
        let mut s = self.lock();
        let launches = s.capture.take().unwrap_or_default();
        let now = &s.counts;
        let other = (now.allocations - since.allocations)
            + (now.uploads - since.uploads)
            + (now.writes - since.writes)
            + (now.device_copies - since.device_copies)
            + (now.host_syncs - since.host_syncs);
        if other > 0 {
            return Err(deltanet_core::Error::Device {
                backend: "cuda-emulated".into(),
                op: "end_capture".into(),
                message: format!("{other} operations other than launches during the capture ({since:?} -> {now:?})"),
            });
        }
        Ok(EmuGraph { launches })
    }
}

/// Host memory (the emulation's device memory) that counts what is done with it.
#[derive(Debug, Clone, Default)]
pub struct CountingMemory {
    counter: Counter,
}

impl DeviceMemory for CountingMemory {
    type Buffer = HostBuffer;

    fn device(&self) -> Device {
        Device::Host
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<HostBuffer> {
        self.counter.bump(|c| c.allocations += 1);
        HostMemory.alloc_zeroed(bytes)
    }
    fn len(&self, buf: &HostBuffer) -> usize {
        HostMemory.len(buf)
    }
    fn addr(&self, buf: &HostBuffer) -> u64 {
        HostMemory.addr(buf)
    }
    fn copy_within(&self, buf: &mut HostBuffer, src: usize, dst: usize, bytes: usize) -> Result<()> {
        self.counter.bump(|c| c.device_copies += 1);
        HostMemory.copy_within(buf, src, dst, bytes)
    }
    fn copy_between(&self, src: &HostBuffer, src_off: usize, dst: &mut HostBuffer, dst_off: usize, bytes: usize) -> Result<()> {
        self.counter.bump(|c| c.device_copies += 1);
        HostMemory.copy_between(src, src_off, dst, dst_off, bytes)
    }
    fn zero(&self, buf: &mut HostBuffer, off: usize, bytes: usize) -> Result<()> {
        self.counter.bump(|c| c.device_copies += 1);
        HostMemory.zero(buf, off, bytes)
    }
    fn read(&self, buf: &HostBuffer, off: usize, dst: &mut [u8]) -> Result<()> {
        self.counter.bump(|c| c.host_syncs += 1);
        HostMemory.read(buf, off, dst)
    }
    fn write(&self, buf: &mut HostBuffer, off: usize, src: &[u8]) -> Result<()> {
        self.counter.bump(|c| c.writes += 1);
        HostMemory.write(buf, off, src)
    }
}

/// Runs the kernels in the emulation, as `EmuLauncher`, counting every launch,
/// upload, allocation and host wait into its [`Counter`].
#[derive(Debug, Clone, Default)]
pub struct CountingLauncher {
    memory: CountingMemory,
}

impl CountingLauncher {
    /// A launcher with fresh counters.
    pub fn new() -> Self {
        Self::default()
    }
    /// Its counters (shared with its memory).
    pub fn counter(&self) -> Counter {
        self.memory.counter.clone()
    }
}

impl sealed::Sealed for CountingLauncher {}

impl Launcher for CountingLauncher {
    type Memory = CountingMemory;
    type Staging = Vec<u8>;

    fn memory(&self) -> &CountingMemory {
        &self.memory
    }
    fn backend(&self) -> &'static str {
        "cuda-emulated"
    }
    fn tensor_cores(&self) -> bool {
        // it runs the kernels in the emulation, with the emulation's tensor cores
        crate::emu::EmuLauncher::default().tensor_cores()
    }
    fn block_threads(&self, _kernel: Kernel) -> u32 {
        64
    }
    fn launch<A: KernelArgs>(&self, grid: (u32, u32, u32), block: u32, args: &A) -> Result<()> {
        {
            let mut s = self.memory.counter.lock();
            *s.counts.launches.entry(A::KERNEL.name()).or_default() += 1;
            if let Some(c) = s.capture.as_mut() {
                // SAFETY: `A` is a #[repr(C)] struct of integers and floats without
                // padding (checked in args.rs), so all its bytes are initialised.
                let bytes = unsafe { std::slice::from_raw_parts((args as *const A).cast::<u8>(), std::mem::size_of::<A>()) };
                c.push(CapturedLaunch { name: A::KERNEL.name(), grid, block, args: bytes.to_vec() });
            }
        }
        crate::emu::launch(grid, block, args)
    }
    fn alloc_device(&self, bytes: usize) -> Result<HostBuffer> {
        self.memory.alloc_zeroed(bytes)
    }
    fn alloc_staging(&self, bytes: usize) -> Result<Vec<u8>> {
        self.memory.counter.bump(|c| c.allocations += 1);
        Ok(vec![0; bytes])
    }
    fn staging_mut<'s>(&self, staging: &'s mut Vec<u8>) -> Result<&'s mut [u8]> {
        Ok(staging)
    }
    fn upload(&self, staging: &Vec<u8>, dst: &mut HostBuffer) -> Result<()> {
        self.memory.counter.bump(|c| c.uploads += 1);
        HostMemory.write(dst, 0, staging)
    }
}
