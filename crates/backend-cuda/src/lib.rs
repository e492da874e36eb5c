//! # deltanet-backend-cuda
//!
//! The CUDA backend of deltanet: [`CudaDispatcher`] implements core's
//! [`Kernels`] (so engines call it through `KernelDispatcher`) on NVIDIA GPUs with cudarc, in the V-major layout, with
//! f32 or bf16 state and f32/bf16/f16 inputs. The kernels are CUDA C under
//! `kernels/cuda`, compiled at run time by NVRTC for the device's architecture
//! and cached per device and architecture. Each kernel takes one argument
//! struct of `kernels/cuda/args.h`, mirrored in Rust with checked layouts.
//!
//! The dispatcher's host logic launches through a [`Launcher`]: [`GpuLauncher`]
//! (cudarc) on a GPU, or, with the `emulate` feature, `EmuLauncher`, which runs
//! the very same kernel sources compiled by the host C++ compiler against an
//! emulation of the CUDA execution model (`kernels/cuda/emu`). The
//! [`Kernels`] implementation is one piece of code over both.
//!
//! Without a driver library, NVRTC or a device, [`CudaDispatcher::new`] returns
//! [`Error::Unavailable`] (cudarc would panic; the libraries are probed first).
//!
//! Both speculative modes ([`SpecMode`]) are implemented. In
//! [`SpecMode::Replay`], verify writes no state (`dnk_replay` computes every
//! draft's output from the slot's state, chains and trees, and records each
//! draft's k, v, g, beta; the conv records its raw input) and commit replays
//! the accepted path on the slot's state in place. `dnk_replay` runs the
//! decode's device functions in the decode's order and rounds the state to
//! its dtype after every step, so replay is bitwise: a commit leaves the state
//! decoding the accepted tokens leaves, and verify's outputs are the scratch
//! mode's (f32 and bf16 state).
//!
//! ## Inside an engine's step: its stream, one plan per step, graph capture
//!
//! **Stream.** [`CudaDispatcher::new`] queues on the device's default stream;
//! [`CudaDispatcher::on_stream`] on the engine's cudarc stream and
//! [`CudaDispatcher::on_raw_stream`] on its raw `CUstream` (from PyTorch,
//! `torch.cuda.current_stream().cuda_stream`). Operations only queue work:
//! no launch, upload or table build waits for the device. A device fault of
//! a queued kernel surfaces at the next call that waits for the stream (a
//! pool export or read, a tensor read, the engine's own synchronisation), as
//! [`Error::Device`]; the pool's bookkeeping (slots, generations, current
//! verifies) is then the host's view of the calls that were accepted, and
//! the states those calls wrote are undefined: the engine drops or
//! re-imports them, as after any CUDA fault.
//!
//! **Step plans.** A forward step's batch (extend, decode, verify, commit) is
//! the same for every layer, so its index tables are built once on the host
//! into a [`StepPlan`] and uploaded once (one asynchronous copy from
//! page-locked memory into a device buffer the plan owns); every layer then
//! runs on [`CudaDispatcher::planned`], which implements the same [`Kernels`]
//! (so the layer forward and every `KernelDispatcher` method take it). A plan
//! is rebuilt in place each step: after the first step nothing is allocated.
//! The batch-only entry points still work: each builds a one-use plan.
//!
//! **Graph capture.** A plan made [`StepPlan::with_capacity`]`(bucket)` keeps
//! its device addresses for every batch of up to `bucket` requests (entries
//! past the batch are padded onto slot 0), and a planned decode or verify
//! step allocates nothing, never waits for the device and reads no device
//! data on the host — so it can be captured. An engine captures once per
//! bucket, with a batch of `bucket` requests, then before each replay
//! rebuilds the plan for the step's batch (up to `bucket` requests; the
//! engine pads its input buffers as it does for attention) and replays:
//!
//! ```no_run
//! # use deltanet_backend_cuda::{cudarc::driver::{sys, CudaContext}, CudaDispatcher, StepPlan};
//! # use deltanet_core::*;
//! # fn layer_forward(d: &impl KernelDispatcher<Memory = deltanet_backend_cuda::CudaMemory, Layout = VMajor>,
//! #     pool: &mut StatePool<deltanet_backend_cuda::CudaMemory, VMajor>, layer: usize, b: &DecodeBatch) -> Result<()> { Ok(()) }
//! # fn main() -> Result<()> {
//! let ctx = CudaContext::new(0).unwrap();
//! let stream = ctx.new_stream().unwrap(); // the engine's stream
//! let d = CudaDispatcher::on_stream(0, stream.clone())?;
//! let mut pool = d.new_pool(PoolConfig::new(30, 256, ModelDims::new(16, 32, 128, 128, 4)?))?;
//! let slots = pool.alloc(8)?;
//! let mut plan = StepPlan::with_capacity(8); // one plan per captured batch bucket
//!
//! // eager step: plan once, every layer on the plan (forward_decode(&d.planned(&plan), ...))
//! let batch = DecodeBatch::new(&pool, &slots)?;
//! d.plan_decode(&mut plan, &pool, &batch)?;
//! for layer in 0..30 {
//!     layer_forward(&d.planned(&plan), &mut pool, layer, &batch)?;
//! }
//!
//! // capture the same step once ...
//! stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
//! for layer in 0..30 {
//!     layer_forward(&d.planned(&plan), &mut pool, layer, &batch)?;
//! }
//! let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0)).unwrap().unwrap();
//! // ... and for each later step of up to 8 requests: rebuild the plan (one upload), replay
//! let next = DecodeBatch::new(&pool, &slots[..5])?;
//! d.plan_decode(&mut plan, &pool, &next)?;
//! graph.launch().unwrap();
//! # Ok(()) }
//! ```
//!
//! Run the step once uncaptured first (it sizes the layer workspace and the
//! plan). With cudarc's own streams, disable its cross-stream event tracking
//! (`CudaContext::disable_event_tracking`) before capturing: a capture may
//! not wait on events recorded outside it. The plan's staging memory is
//! rewritten by the next build only after its previous upload has run; keep
//! two plans to build step `n+1` while step `n` is still queued.

#![warn(missing_docs)]

mod args;
mod extend_tc;
mod gpu;
mod kernels;
mod launcher;
mod launches;
mod nvrtc;
mod planned;
mod replay;
mod step_plan;

#[cfg(feature = "emulate")]
mod counting;
#[cfg(feature = "emulate")]
mod emu;

#[cfg(test)]
mod compile_gate;

#[cfg(feature = "emulate")]
pub use counting::{Counter, CountingLauncher, CountingMemory, Counts, EmuGraph};
pub use cudarc;
#[cfg(feature = "emulate")]
pub use emu::EmuLauncher;
pub use extend_tc::ExtendPath;
pub use gpu::{CudaBuffer, CudaMemory, GpuLauncher};
pub use launcher::Launcher;
pub use planned::Planned;
pub use step_plan::StepPlan;

use args::{dtype_code, CastArgs, ConvArgs, DeltaArgs, GateArgs, KernelArgs};
use deltanet_core::{
    Capabilities, Checked, CommitBatch, ConvIo, DType, DecodeBatch, DeltaIo, Device, DimLimits, Error, ExtendBatch, GateCall, HeadMapping,
    Kernels, LayoutKind, MambaStatePool, ModelDims, PoolConfig, PoolOf, Result, SpecMode, TensorMeta, TensorMut, TensorRef, VMajor,
    VerifyBatch,
};
use kernels::{Kernel, CHUNK, MAX_CONV_WIDTH, MAX_HEAD_DIM};
use std::sync::Mutex;
use step_plan::{ExtendWorkspace, PlanAddrs, ReplayPaths, StepRef};

/// Checks, without panicking, that a CUDA driver and a device are present
/// (for `deltanet info`).
pub fn probe() -> std::result::Result<(), String> {
    gpu::probe().map(|_| ())
}

/// The CUDA dispatcher, generic over how kernels are launched (a GPU by default).
pub struct CudaDispatcher<L: Launcher = GpuLauncher> {
    launcher: L,
    caps: Capabilities,
    /// The one-use plan of the batch-only entry points, rebuilt by each call
    /// (the lock is held from the build to the launch).
    scratch: Mutex<Box<StepPlan<L>>>,
    /// Upper bound on the extend workspace (bytes); more sequences than fit take turns.
    extend_workspace_budget: usize,
    /// Which kernel runs extend.
    extend_path: ExtendPath,
}

impl<L: Launcher> std::fmt::Debug for CudaDispatcher<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDispatcher").field("caps", &self.caps).finish_non_exhaustive()
    }
}

/// Default bound on the extend workspace (each (sequence, head, 32-row tile)
/// block needs `4 * (32 K + 64 (3 K + 64))` bytes: 128 KiB at K = 128).
const DEFAULT_EXTEND_WORKSPACE: usize = 256 << 20;

impl CudaDispatcher<GpuLauncher> {
    /// Opens GPU `ordinal` and compiles the kernels for it (once per device and
    /// architecture). [`Error::Unavailable`] when the CUDA driver library,
    /// NVRTC or the device is missing.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(Self::with_launcher(GpuLauncher::new(ordinal, gpu::StreamChoice::Default)?, Device::Cuda(ordinal)))
    }

    /// As [`new`](Self::new), queueing every operation on the engine's
    /// cudarc `stream` (of device `ordinal`) instead of the default stream.
    pub fn on_stream(ordinal: usize, stream: std::sync::Arc<cudarc::driver::CudaStream>) -> Result<Self> {
        Ok(Self::with_launcher(GpuLauncher::new(ordinal, gpu::StreamChoice::Cudarc(stream))?, Device::Cuda(ordinal)))
    }

    /// As [`new`](Self::new), queueing every operation on the engine's raw
    /// `CUstream` (what `torch.cuda.current_stream().cuda_stream` gives).
    ///
    /// # Safety
    /// `stream` must be a live stream of device `ordinal`'s primary context
    /// (the one PyTorch and cudarc use) and must outlive the dispatcher and
    /// every pool and plan made from it; the dispatcher never destroys it.
    pub unsafe fn on_raw_stream(ordinal: usize, stream: cudarc::driver::sys::CUstream) -> Result<Self> {
        Ok(Self::with_launcher(GpuLauncher::new(ordinal, gpu::StreamChoice::Raw(stream))?, Device::Cuda(ordinal)))
    }

    /// The device's name and compute capability.
    pub fn device_info(&self) -> (String, (i32, i32)) {
        self.launcher.device_info()
    }
}

#[cfg(feature = "emulate")]
impl CudaDispatcher<EmuLauncher> {
    /// The kernels run in the CPU emulation of the CUDA execution model, on host memory.
    pub fn emulated() -> Self {
        Self::with_launcher(EmuLauncher::default(), Device::Host)
    }
}

#[cfg(feature = "emulate")]
impl CudaDispatcher<CountingLauncher> {
    /// The emulation with a [`CountingLauncher`]: the returned [`Counter`]
    /// counts every launch, upload, allocation and host wait of the
    /// dispatcher and of every pool and workspace on its memory.
    pub fn counting() -> (Self, Counter) {
        let launcher = CountingLauncher::new();
        let counter = launcher.counter();
        (Self::with_launcher(launcher, Device::Host), counter)
    }
}

fn unsupported(backend: &str, reason: String) -> Error {
    Error::Unsupported { backend: backend.into(), reason }
}

/// Element strides of a `[T, H, X]` view: (token, head).
fn strides3(m: &TensorMeta) -> (i64, i64) {
    (m.strides()[0] as i64, m.strides()[1] as i64)
}

/// Row stride of a `[T, X]` view.
fn stride2(m: &TensorMeta) -> i64 {
    m.strides()[0] as i64
}

impl<L: Launcher> CudaDispatcher<L> {
    /// A dispatcher over any launcher whose memory lives on `device`.
    pub fn with_launcher(launcher: L, device: Device) -> Self {
        let limits =
            DimLimits { max_head_dim: Some(MAX_HEAD_DIM), conv_widths: Some((2..=MAX_CONV_WIDTH).collect()), ..DimLimits::default() };
        let caps = Capabilities::new(launcher.backend(), device, LayoutKind::VMajor)
            .with_limits(limits)
            .with_chunk_size(CHUNK)
            .with_spec_modes(&SpecMode::ALL);
        CudaDispatcher {
            launcher,
            caps,
            scratch: Mutex::new(Box::default()),
            extend_workspace_budget: DEFAULT_EXTEND_WORKSPACE,
            extend_path: ExtendPath::default(),
        }
    }

    /// Bounds the extend workspace to `bytes` (default 256 MiB): the kernel's
    /// blocks then take the sequences in turns. Results do not depend on it.
    pub fn with_extend_workspace_budget(mut self, bytes: usize) -> Self {
        self.extend_workspace_budget = bytes;
        self
    }

    /// Picks the kernel that runs extend (default [`ExtendPath::Auto`]).
    pub fn with_extend_path(mut self, path: ExtendPath) -> Self {
        self.extend_path = path;
        self
    }

    /// Converts the elements of a contiguous tensor into another dtype (f32, bf16,
    /// f16; round to nearest even), on the device, with the kernels' own conversions.
    pub fn cast(&self, src: TensorRef<'_>, dst: TensorMut<'_>) -> Result<()> {
        let (s, d) = (src.meta(), dst.meta());
        for (name, m) in [("src", s), ("dst", d)] {
            if m.device() != self.caps.device {
                return Err(Error::DeviceMismatch { name: name.into(), expected: self.caps.device, actual: m.device() });
            }
            if !m.is_contiguous() {
                return Err(Error::BadStrides { name: name.into(), reason: "cast needs contiguous tensors".into() });
            }
        }
        if s.numel() != d.numel() {
            return Err(Error::shape("dst", s.shape(), d.shape()));
        }
        let a = CastArgs {
            src: src.addr(),
            dst: dst.addr(),
            count: s.numel() as i64,
            src_dtype: dtype_code(s.dtype()),
            dst_dtype: dtype_code(d.dtype()),
        };
        let bt = self.launcher.block_threads(Kernel::Cast) as usize;
        self.run((s.numel().div_ceil(bt), 1, 1), &a)
    }

    /// Builds `plan` for an extend step of `batch` (a batch of `pool`) and
    /// queues its one upload; every layer's conv and delta rule of the step
    /// then run on [`planned`](Self::planned)`(&plan)`.
    pub fn plan_extend(&self, plan: &mut StepPlan<L>, pool: &PoolOf<Self>, batch: &ExtendBatch) -> Result<()> {
        self.build_plan(plan, pool, StepRef::Extend(batch))
    }
    /// As [`plan_extend`](Self::plan_extend) for a decode step.
    pub fn plan_decode(&self, plan: &mut StepPlan<L>, pool: &PoolOf<Self>, batch: &DecodeBatch) -> Result<()> {
        self.build_plan(plan, pool, StepRef::Decode(batch))
    }
    /// As [`plan_extend`](Self::plan_extend) for a verify step.
    pub fn plan_verify(&self, plan: &mut StepPlan<L>, pool: &PoolOf<Self>, batch: &VerifyBatch) -> Result<()> {
        self.build_plan(plan, pool, StepRef::Verify(batch))
    }
    /// As [`plan_extend`](Self::plan_extend) for a commit step. On a replay
    /// pool the plan also holds the paths the commit replays, from the pool's
    /// record of the step's verify (build it after the verify): a layer whose
    /// verify was another tree is refused by the planned commit.
    pub fn plan_commit(&self, plan: &mut StepPlan<L>, pool: &PoolOf<Self>, batch: &CommitBatch) -> Result<()> {
        self.build_plan(plan, pool, StepRef::Commit(batch))
    }

    fn build_plan(&self, plan: &mut StepPlan<L>, pool: &PoolOf<Self>, step: StepRef<'_>) -> Result<()> {
        match step {
            StepRef::Extend(b) => b.check_pool(pool)?,
            StepRef::Decode(b) => b.check_pool(pool)?,
            StepRef::Verify(b) => b.check_pool(pool)?,
            StepRef::Commit(b) | StepRef::CommitReplay(b, _) => b.check_pool(pool)?,
        }
        let _span = tracing::debug_span!("plan", backend = self.launcher.backend()).entered();
        let config = &pool.geometry().config;
        // A replay pool's commit replays the paths of the step's verify (layer 0's: every
        // layer of a step verifies the same batch; each layer's call checks its own).
        let paths;
        let step = match step {
            StepRef::Commit(b) if config.spec_mode() == Some(SpecMode::Replay) => {
                paths = ReplayPaths::of(pool, 0, b);
                StepRef::CommitReplay(b, &paths)
            }
            step => step,
        };
        plan.build(&self.launcher, step, &config.dims, self.extend_workspace(config.state_dtype)).map(|_| ())
    }

    /// How a plan of a pool with `state_dtype` sizes its extend workspace.
    fn extend_workspace(&self, state_dtype: DType) -> ExtendWorkspace {
        ExtendWorkspace { budget: self.extend_workspace_budget, tensor_cores: self.extend_may_use_tc(state_dtype) }
    }

    /// Runs `launch` on the tables of a one-use plan of `step` (the batch-only
    /// entry points) for a pool of `config`.
    fn with_scratch_plan(&self, step: StepRef<'_>, config: PoolConfig, launch: impl FnOnce(&PlanAddrs) -> Result<()>) -> Result<()> {
        let mut plan = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let addrs = plan.build(&self.launcher, step, &config.dims, self.extend_workspace(config.state_dtype))?;
        launch(&addrs)
    }

    fn run<A: KernelArgs>(&self, grid: (usize, usize, usize), args: &A) -> Result<()> {
        let kernel = A::KERNEL;
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if grid.1 > 65535 || grid.2 > 65535 || grid.0 > u32::MAX as usize {
            return Err(unsupported(self.launcher.backend(), format!("grid {grid:?} too large")));
        }
        let block = self.launcher.block_threads(kernel);
        let _span = tracing::trace_span!("launch", kernel = kernel.name(), ?grid, block).entered();
        self.launcher.launch((grid.0 as u32, grid.1 as u32, grid.2 as u32), block, args)
    }

    /// The argument fields every delta-rule kernel shares (tensors, dims, dtypes, strides, parameters).
    fn delta_args(&self, dims: &ModelDims, io: &DeltaIo<'_>) -> DeltaArgs {
        let (q_token, q_head) = strides3(io.q.meta());
        let (k_token, k_head) = strides3(io.k.meta());
        let (v_token, v_head) = strides3(io.v.meta());
        let (o_token, o_head) = strides3(io.o.meta());
        DeltaArgs {
            q: io.q.addr(),
            k: io.k.addr(),
            v: io.v.addr(),
            g: io.g.addr(),
            beta: io.beta.addr(),
            o: io.o.addr(),
            q_token,
            q_head,
            k_token,
            k_head,
            v_token,
            v_head,
            g_token: stride2(io.g.meta()),
            beta_token: stride2(io.beta.meta()),
            o_token,
            o_head,
            q_dtype: dtype_code(io.q.meta().dtype()),
            k_dtype: dtype_code(io.k.meta().dtype()),
            v_dtype: dtype_code(io.v.meta().dtype()),
            beta_dtype: dtype_code(io.beta.meta().dtype()),
            o_dtype: dtype_code(io.o.meta().dtype()),
            l2norm: io.params.use_qk_l2norm as i64,
            scale: io.params.scale,
            ..self.delta_dims(dims)
        }
    }

    /// The head dimensions of the delta-rule arguments, no tensors (a replay
    /// commit reads its inputs from the pool's records).
    fn delta_dims(&self, dims: &ModelDims) -> DeltaArgs {
        DeltaArgs {
            hk: dims.num_k_heads as i64,
            hv: dims.num_v_heads as i64,
            dk: dims.head_k_dim as i64,
            dv: dims.head_v_dim as i64,
            head_mapping: match dims.head_mapping {
                HeadMapping::Grouped => 0,
                HeadMapping::Tiled => 1,
            },
            ..DeltaArgs::default()
        }
    }

    /// The argument fields of every conv kernel; the caller sets the state,
    /// the tables and the mode.
    fn conv_args(&self, dims: &ModelDims, io: &ConvIo<'_>, state_dtype: DType) -> ConvArgs {
        ConvArgs {
            x: io.x.addr(),
            weight: io.weight.addr(),
            bias: io.bias.as_ref().map_or(0, |b| b.addr()),
            out: io.out.addr(),
            channels: dims.conv_dim() as i64,
            width: dims.conv_width as i64,
            x_dtype: dtype_code(io.x.meta().dtype()),
            x_row: stride2(io.x.meta()),
            out_dtype: dtype_code(io.out.meta().dtype()),
            out_row: stride2(io.out.meta()),
            state_dtype: dtype_code(state_dtype),
            ..ConvArgs::default()
        }
    }
}

impl<L: Launcher> Kernels for CudaDispatcher<L> {
    type Layout = VMajor;
    type Memory = L::Memory;

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn memory(&self) -> &L::Memory {
        self.launcher.memory()
    }

    fn run_gate(&self, call: GateCall<'_>) -> Result<()> {
        let (tokens, hv, io) = (call.tokens(), call.dims().num_v_heads, call.io());
        let a = GateArgs {
            a: io.a.addr(),
            b: io.b.addr(),
            a_log: io.a_log.addr(),
            dt_bias: io.dt_bias.addr(),
            g: io.g.addr(),
            beta: io.beta.addr(),
            tokens: tokens as i64,
            hv: hv as i64,
            a_row: stride2(io.a.meta()),
            b_row: stride2(io.b.meta()),
            g_row: stride2(io.g.meta()),
            beta_row: stride2(io.beta.meta()),
            a_dtype: dtype_code(io.a.meta().dtype()),
            b_dtype: dtype_code(io.b.meta().dtype()),
        };
        let bt = self.launcher.block_threads(Kernel::Gate) as usize;
        self.run(((tokens * hv).div_ceil(bt), 1, 1), &a)
    }

    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Extend(call.batch()), call.geometry().config, |t| self.conv_extend_on(pool, call, t))
    }

    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Decode(call.batch()), call.geometry().config, |t| self.conv_update_on(pool, call, t))
    }

    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Verify(call.batch()), call.geometry().config, |t| self.conv_verify_on(pool, call, t))
    }

    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Extend(call.batch()), call.geometry().config, |t| self.extend_on(pool, call, t))
    }

    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Decode(call.batch()), call.geometry().config, |t| self.decode_on(pool, call, t))
    }

    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Verify(call.batch()), call.geometry().config, |t| self.verify_on(pool, call, t))
    }

    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        self.with_scratch_plan(StepRef::Commit(call.batch()), call.geometry().config, |t| self.commit_on(pool, call, t))
    }

    fn run_conv_verify_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Verify(call.batch()), call.geometry().config, |t| self.conv_verify_replay_on(pool, call, t))
    }

    fn run_verify_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        self.with_scratch_plan(StepRef::Verify(call.batch()), call.geometry().config, |t| self.verify_replay_on(pool, call, t))
    }

    fn run_commit_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        let paths = ReplayPaths::of(pool, call.layer(), call.batch());
        let step = StepRef::CommitReplay(call.batch(), &paths);
        self.with_scratch_plan(step, call.geometry().config, |t| self.commit_replay_on(pool, call, t))
    }
}
