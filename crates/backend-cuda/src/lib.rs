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

#![warn(missing_docs)]

mod args;
mod extend_tc;
mod gpu;
mod kernels;
mod launcher;
mod nvrtc;

#[cfg(feature = "emulate")]
mod emu;

#[cfg(test)]
mod compile_gate;

#[cfg(feature = "emulate")]
pub use emu::EmuLauncher;
pub use extend_tc::ExtendPath;
pub use gpu::{CudaBuffer, CudaMemory, GpuLauncher};
pub use launcher::Launcher;

use args::{dtype_code, CastArgs, CommitArgs, ConvArgs, DeltaArgs, ExtendArgs, GateArgs, KernelArgs, RecurrentArgs};
use deltanet_core::{
    plan, Capabilities, Checked, CommitBatch, ConvIo, DType, DecodeBatch, DeltaIo, Device, DeviceMemory, DimLimits, Error, ExtendBatch,
    GateCall, HeadMapping, Kernels, LayoutKind, ModelDims, PoolOf, Result, TensorMeta, TensorMut, TensorRef, VMajor, VerifyBatch,
};
use extend_tc::ExtendTables;
use kernels::{Kernel, CHUNK, EXTEND_ROWS, MAX_CONV_WIDTH, MAX_HEAD_DIM, ROWS_PER_BLOCK};
use std::sync::{Mutex, MutexGuard};

/// Checks, without panicking, that a CUDA driver and a device are present
/// (for `deltanet info`).
pub fn probe() -> std::result::Result<(), String> {
    gpu::probe().map(|_| ())
}

/// The CUDA dispatcher, generic over how kernels are launched (a GPU by default).
pub struct CudaDispatcher<L: Launcher = GpuLauncher> {
    launcher: L,
    caps: Capabilities,
    /// Device memory for each launch's index tables and workspace, grown on
    /// demand and reused (launches are synchronous, and the lock is held
    /// from staging to the end of the launch).
    arena: Mutex<Arena<<L::Memory as DeviceMemory>::Buffer>>,
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

/// A reusable device allocation.
struct Arena<B> {
    buf: Option<B>,
    cap: usize,
}

/// Default bound on the extend workspace (each (sequence, head, 32-row tile)
/// block needs `4 * (32 K + 64 (3 K + 64))` bytes: 128 KiB at K = 128).
const DEFAULT_EXTEND_WORKSPACE: usize = 256 << 20;

/// Alignment of every region of the arena.
const ARENA_ALIGN: usize = 256;

/// The staged tables and workspace of one launch; holds the arena until dropped.
struct Staged<'a, B> {
    _guard: MutexGuard<'a, Arena<B>>,
    /// Device address of each table, in the order given.
    tables: Vec<u64>,
    /// Device address of the workspace.
    workspace: u64,
}

impl CudaDispatcher<GpuLauncher> {
    /// Opens GPU `ordinal` and compiles the kernels for it (once per device and
    /// architecture). [`Error::Unavailable`] when the CUDA driver library,
    /// NVRTC or the device is missing.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(Self::with_launcher(GpuLauncher::new(ordinal)?, Device::Cuda(ordinal)))
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
        let caps = Capabilities::new(launcher.backend(), device, LayoutKind::VMajor).with_limits(limits).with_chunk_size(CHUNK);
        CudaDispatcher {
            launcher,
            caps,
            arena: Mutex::new(Arena { buf: None, cap: 0 }),
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

    /// Copies i64 tables to the device (one host-to-device copy) and reserves a
    /// workspace of `ws_bytes` (not zeroed) behind them, in the reused arena.
    fn stage(&self, tables: &[&[i64]], ws_bytes: usize) -> Result<Staged<'_, <L::Memory as DeviceMemory>::Buffer>> {
        let mut offs = Vec::with_capacity(tables.len());
        let mut total = 0;
        for t in tables {
            offs.push(total);
            total += (t.len().max(1) * 8).next_multiple_of(ARENA_ALIGN);
        }
        let ws_off = total;
        total += ws_bytes.next_multiple_of(ARENA_ALIGN).max(ARENA_ALIGN);
        let mut guard = self.arena.lock().unwrap_or_else(|p| p.into_inner());
        let m = self.launcher.memory();
        if guard.cap < total {
            let cap = total.next_power_of_two();
            guard.buf = None;
            guard.buf = Some(m.alloc_zeroed(cap)?);
            guard.cap = cap;
        }
        let buf = guard.buf.as_mut().expect("allocated above");
        let mut bytes = vec![0u8; ws_off];
        for (t, &o) in tables.iter().zip(&offs) {
            for (j, x) in t.iter().enumerate() {
                bytes[o + 8 * j..o + 8 * j + 8].copy_from_slice(&x.to_le_bytes());
            }
        }
        m.write(buf, 0, &bytes)?;
        let base = m.addr(buf);
        Ok(Staged { tables: offs.iter().map(|&o| base + o as u64).collect(), workspace: base + ws_off as u64, _guard: guard })
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
            hk: dims.num_k_heads as i64,
            hv: dims.num_v_heads as i64,
            dk: dims.head_k_dim as i64,
            dv: dims.head_v_dim as i64,
            q_dtype: dtype_code(io.q.meta().dtype()),
            k_dtype: dtype_code(io.k.meta().dtype()),
            v_dtype: dtype_code(io.v.meta().dtype()),
            beta_dtype: dtype_code(io.beta.meta().dtype()),
            o_dtype: dtype_code(io.o.meta().dtype()),
            head_mapping: match dims.head_mapping {
                HeadMapping::Grouped => 0,
                HeadMapping::Tiled => 1,
            },
            l2norm: io.params.use_qk_l2norm as i64,
            scale: io.params.scale,
            pad: 0.0,
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
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let n = batch.num_seqs();
        let (mut seqs, mut snaps) = (Vec::with_capacity(n * 6), Vec::new());
        for i in 0..n {
            let begin = snaps.len() as i64 / 2;
            for s in batch.snapshots_of(i) {
                snaps.extend([s.position as i64, s.slot.index() as i64]);
            }
            let r = batch.seq_range(i);
            let init = batch.has_initial_state()[i] as i64;
            seqs.extend([r.start as i64, r.len() as i64, batch.slots()[i].index() as i64, init, begin, snaps.len() as i64 / 2]);
        }
        let st = self.stage(&[&seqs, &snaps], 0)?;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let a = ConvArgs {
                state: m.addr(parts.conv) + g.conv_offset(layer, 0) as u64,
                seqs: st.tables[0],
                snapshots: st.tables[1],
                mode: 0,
                ..self.conv_args(&dims, io, g.config.conv_dtype)
            };
            let bt = self.launcher.block_threads(Kernel::Conv) as usize;
            self.run((dims.conv_dim().div_ceil(bt), n, 1), &a)
        })
    }

    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let n = batch.num_seqs();
        let seqs: Vec<i64> = batch.slots().iter().enumerate().flat_map(|(i, s)| [i as i64, 1, s.index() as i64, 1, 0, 0]).collect();
        let st = self.stage(&[&seqs], 0)?;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let a = ConvArgs {
                state: m.addr(parts.conv) + g.conv_offset(layer, 0) as u64,
                seqs: st.tables[0],
                mode: 1,
                ..self.conv_args(&dims, io, g.config.conv_dtype)
            };
            let bt = self.launcher.block_threads(Kernel::Conv) as usize;
            self.run((dims.conv_dim().div_ceil(bt), n, 1), &a)
        })
    }

    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let (n, d) = (batch.num_seqs(), batch.draft());
        let seqs: Vec<i64> =
            batch.slots().iter().enumerate().flat_map(|(i, s)| [(i * d) as i64, d as i64, s.index() as i64, 1, 0, 0]).collect();
        let st = self.stage(&[&seqs, batch.parents()], 0)?;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let windows = parts.windows.ok_or(Error::NoSpeculativeBuffers)?;
            let a = ConvArgs {
                state: m.addr(parts.conv) + g.conv_offset(layer, 0) as u64,
                windows: m.addr(windows) + g.window_offset(layer, 0, 0) as u64,
                seqs: st.tables[0],
                parents: st.tables[1],
                draft: d as i64,
                mode: 2,
                ..self.conv_args(&dims, io, g.config.conv_dtype)
            };
            let bt = self.launcher.block_threads(Kernel::Conv) as usize;
            self.run((dims.conv_dim().div_ceil(bt), n, 1), &a)
        })
    }

    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let n = batch.num_seqs();
        // Chunks of CHUNK tokens from each sequence's start, also cut at snapshot
        // positions (core's plan); each snapshot is taken at the end of its chunk.
        let (mut seqs, mut chunks, mut snap_slots) = (Vec::with_capacity(n * 6), Vec::new(), Vec::new());
        let pieces = plan::extend_pieces(batch, Some(CHUNK));
        for i in 0..n {
            let r = batch.seq_range(i);
            let first_chunk = chunks.len() as i64 / 4;
            for p in pieces.iter().filter(|p| p.seq == i) {
                let sb = snap_slots.len() as i64;
                snap_slots.extend(plan::slot_indices(&p.snapshots));
                chunks.extend([p.tokens.start as i64, p.tokens.len() as i64, sb, snap_slots.len() as i64]);
            }
            let init = batch.has_initial_state()[i] as i64;
            seqs.extend([r.start as i64, r.len() as i64, batch.slots()[i].index() as i64, init, first_chunk, chunks.len() as i64 / 4]);
        }
        let (k, v, hv) = (dims.head_k_dim, dims.head_v_dim, dims.num_v_heads);
        let m = self.launcher.memory();
        if let Some(precision) = self.extend_precision(io, g.config.state_dtype)? {
            let chunks_per_seq: Vec<usize> = seqs.chunks(6).map(|s| (s[5] - s[4]) as usize).collect();
            let st = self.stage(&[&seqs, &chunks, &snap_slots], self.tc_workspace_bytes(&chunks_per_seq, k, v, hv))?;
            let tables = ExtendTables { seqs: st.tables[0], chunks: st.tables[1], snapshot_slots: st.tables[2], chunks_per_seq };
            return pool.checked_parts(ticket, |parts| {
                let state = m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64;
                self.run_extend_tc(self.delta_args(&dims, io), &tables, st.workspace, state, g.config.state_dtype, precision)
            });
        }
        let tiles = v.div_ceil(EXTEND_ROWS);
        let per_block = EXTEND_ROWS * k + CHUNK * (3 * k + 2 * EXTEND_ROWS);
        // blocks stride over the sequences, so the workspace is bounded by the budget
        let rows = (self.extend_workspace_budget / (hv * tiles * per_block * 4)).clamp(1, n);
        let st = self.stage(&[&seqs, &chunks, &snap_slots], rows * hv * tiles * per_block * 4)?;
        pool.checked_parts(ticket, |parts| {
            let a = ExtendArgs {
                io: self.delta_args(&dims, io),
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                seqs: st.tables[0],
                chunks: st.tables[1],
                snapshot_slots: st.tables[2],
                workspace: st.workspace,
                seqs_count: n as i64,
                state_dtype: dtype_code(g.config.state_dtype),
            };
            self.run((hv, rows, tiles), &a)
        })
    }

    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let n = batch.num_seqs();
        let slots = plan::slot_indices(batch.slots());
        let st = self.stage(&[&slots], 0)?;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let a = RecurrentArgs {
                io: self.delta_args(&dims, io),
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                scratch: 0,
                slots: st.tables[0],
                parents: 0,
                draft: 1,
                state_dtype: dtype_code(g.config.state_dtype),
                mode: 0,
            };
            self.run((dims.head_v_dim.div_ceil(ROWS_PER_BLOCK), dims.num_v_heads, n), &a)
        })
    }

    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let (n, d) = (batch.num_seqs(), batch.draft());
        let slots = plan::slot_indices(batch.slots());
        let st = self.stage(&[&slots, batch.parents()], 0)?;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let scratch = parts.scratch.ok_or(Error::NoSpeculativeBuffers)?;
            let a = RecurrentArgs {
                io: self.delta_args(&dims, io),
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                scratch: m.addr(scratch) + g.scratch_offset(layer, 0, 0) as u64,
                slots: st.tables[0],
                parents: st.tables[1],
                draft: d as i64,
                state_dtype: dtype_code(g.config.state_dtype),
                mode: 1,
            };
            self.run((dims.head_v_dim.div_ceil(ROWS_PER_BLOCK), dims.num_v_heads, n), &a)
        })
    }

    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let mut targets = Vec::new();
        for c in batch.commits() {
            for dst in std::iter::once(c.slot).chain(c.snapshot) {
                targets.extend([c.slot.index() as i64, c.step as i64, dst.index() as i64]);
            }
        }
        if targets.is_empty() {
            // Every request skipped: nothing to copy, and no launch of an empty grid.
            return Ok(());
        }
        let st = self.stage(&[&targets], 0)?;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let (scratch, windows) = match (parts.scratch, parts.windows) {
                (Some(s), Some(w)) => (s, w),
                _ => return Err(Error::NoSpeculativeBuffers),
            };
            let (su, cu) = (g.state_bytes() / 2, g.conv_bytes() / 2);
            let a = CommitArgs {
                scratch: m.addr(scratch) + g.scratch_offset(layer, 0, 0) as u64,
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                windows: m.addr(windows) + g.window_offset(layer, 0, 0) as u64,
                conv: m.addr(parts.conv) + g.conv_offset(layer, 0) as u64,
                targets: st.tables[0],
                state_units: su as i64,
                conv_units: cu as i64,
                draft: g.draft() as i64,
            };
            let bt = self.launcher.block_threads(Kernel::Commit) as usize;
            self.run((su.max(cu).div_ceil(bt), targets.len() / 3, 1), &a)
        })
    }
}
