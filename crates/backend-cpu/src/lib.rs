//! # deltanet-backend-cpu
//!
//! The CPU kernels of deltanet, for both recurrent-state layouts:
//! [`CpuKMajor`] (`[HV, K, V]`, the default) and [`CpuVMajor`] (`[HV, V, K]`,
//! the NPU's native layout, so pools of that layout run on every machine).
//!
//! - **extend** (`extend.rs`): the chunked algorithm of DESIGN §2 (chunk 64
//!   aligned to each sequence's extend start), dense per-chunk products
//!   through the `gemm` crate (`gemm.rs`), rayon over (sequence, key head):
//!   the value heads that read one key head share its q, k and `[Q; K] K^T`,
//!   so one task runs them all. A 1-token sequence continuing its state (a
//!   decode in a mixed step) is one task per (sequence, value head) through
//!   the decode step instead. Snapshots at any position (computed from the
//!   chunk's `V'` without changing the main path, so a sequence's outputs do
//!   not depend on whether snapshots were asked for).
//! - **decode / verify** (`steps.rs`): rayon over (sequence, value head), one
//!   fused pass over the head's state for all of a request's tokens, in place
//!   (decode) or from the parent step into the scratch (verify);
//!   [`CpuDispatcher::decode_caller_state`] runs the decode on an f32
//!   recurrent state the caller owns (`[N, HV, K, V]` in the layout), the
//!   same bits as a pool decode.
//! - **speculative modes** both ([`SpecMode`]): scratch
//!   as above; replay (`replay.rs`): verify writes no state (each step's state
//!   lives only in the per-thread block its children read) and records the
//!   drafts' raw conv inputs and the k, v, g, beta it used; commit replays the
//!   accepted path in one pass over each head, in place, through the same
//!   step. Both bitwise: replay commit == decoding the accepted tokens, replay
//!   verify outputs == scratch verify outputs (the conformance suite checks it).
//! - **conv** (`conv.rs`) extend / update / verify with the conv state, rayon
//!   over blocks of 2048 channels (each block runs every request of the call);
//!   [`CpuDispatcher::conv_update_caller_state`] runs the decode update on a
//!   conv state the caller owns (causal-conv1d's `[B, conv_dim, S]`);
//!   **gate** (`gate.rs`) fused, on the calling thread.
//!
//! Inputs f32, bf16 or f16 (widened on load), f32 accumulation, state f32 or
//! bf16 (bf16: widened on load, rounded once per chunk / per token;
//! `state_io.rs`). Results of a sequence are bitwise independent of the
//! batch, of the thread count and of the run: every task runs the same
//! single-threaded arithmetic on the same chunk boundaries, and a 1-token
//! chunk runs the decode step's arithmetic, so it gives the same bits
//! whichever task shape ran it.
//!
//! ```
//! use deltanet_backend_cpu::CpuKMajor;
//! use deltanet_core::*;
//! let d = CpuKMajor::new();
//! let dims = ModelDims::builder().key_heads(1).value_heads(2).head_k_dim(16).head_v_dim(8).conv_width(4).build().unwrap();
//! let mut pool = d.new_pool(PoolConfig::builder(dims).layers(1).slots(2).build().unwrap()).unwrap();
//! let s = pool.alloc(1).unwrap();
//! let t = 3;
//! let q = vec![0.5f32; t * 16];
//! let v = vec![0.25f32; t * 2 * 8];
//! let g = vec![-0.1f32; t * 2];
//! let beta = vec![0.5f32; t * 2];
//! let mut o = vec![0f32; t * 2 * 8];
//! let batch = ExtendBatch::new(&pool, &[0, t], &s, &[false]).unwrap();
//! let io = DeltaIo {
//!     q: TensorRef::from_slice(&q, &[t, 1, 16]).unwrap(),
//!     k: TensorRef::from_slice(&q, &[t, 1, 16]).unwrap(),
//!     v: TensorRef::from_slice(&v, &[t, 2, 8]).unwrap(),
//!     g: TensorRef::from_slice(&g, &[t, 2]).unwrap(),
//!     beta: TensorRef::from_slice(&beta, &[t, 2]).unwrap(),
//!     o: TensorMut::from_slice(&mut o, &[t, 2, 8]).unwrap(),
//!     params: DeltaParams::new(&dims),
//! };
//! d.extend(&mut pool, 0, &batch, io).unwrap();
//! assert!(o.iter().all(|x| x.is_finite() && *x != 0.0));
//! ```

#![warn(missing_docs)]

mod bf16_rows;
mod conv;
mod delta_views;
mod extend;
mod gate;
mod gemm;
mod io;
mod replay;
mod scratch;
mod simd;
mod state_io;
mod steps;
mod team;
mod vmath;

pub use extend::CHUNK;
pub use team::HostTeam;

use conv::{ConvBlock, CONV_BLOCK};
use delta_views::DeltaViews;
use deltanet_core::*;
use extend::{extend_head, ExtendTarget};
use half::bf16;
use io::{In, Out, RawBuf};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;
use steps::{steps_head, StepInputs};

/// The CPU dispatcher for state layout `L`.
pub struct CpuDispatcher<L: StateLayout> {
    caps: Capabilities,
    threads: Option<Arc<rayon::ThreadPool>>,
    /// A decode (or decode conv update) whose states total at most this many
    /// bytes runs on the calling thread ([`Self::with_inline_decode`]; 0: never).
    inline_decode_bytes: usize,
    /// The host's threads that decode, extend and conv calls run on ([`Self::with_host_team`]).
    team: Option<Arc<dyn HostTeam>>,
    _layout: PhantomData<L>,
}

/// The K-major CPU dispatcher (backend name `"cpu"`).
pub type CpuKMajor = CpuDispatcher<KMajor>;
/// The V-major CPU dispatcher (backend name `"cpu-vk"`).
pub type CpuVMajor = CpuDispatcher<VMajor>;

impl<L: StateLayout> std::fmt::Debug for CpuDispatcher<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuDispatcher").field("backend", &self.caps.backend).field("threads", &self.threads()).finish()
    }
}

impl<L: StateLayout> Default for CpuDispatcher<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: StateLayout> CpuDispatcher<L> {
    /// A dispatcher on rayon's global thread pool.
    pub fn new() -> Self {
        let backend = match L::KIND {
            LayoutKind::KMajor => "cpu",
            LayoutKind::VMajor => "cpu-vk",
        };
        let caps = Capabilities::new(backend, Device::Host, L::KIND).with_chunk_size(CHUNK).with_spec_modes(&SpecMode::ALL);
        CpuDispatcher { caps, threads: None, inline_decode_bytes: 0, team: None, _layout: PhantomData }
    }

    /// Runs a decode whose recurrent states total at most `bytes` (all the
    /// call's requests together), and a conv update whose conv states do, on
    /// the calling thread instead of the worker pool. For hosts whose own
    /// threads keep the other cores busy between calls: inside torch, whose
    /// OpenMP workers spin after every operation, a second worker shares a core
    /// with a spinning thread, is preempted mid-task and the caller waits for
    /// it at the join (a batch-1 decode of a Qwen3.5-0.8B layer in
    /// transformers: ~2.7x faster on the calling thread alone). The results
    /// are the same bits either way.
    pub fn with_inline_decode(mut self, bytes: usize) -> Self {
        self.inline_decode_bytes = bytes;
        self
    }

    /// Runs the parallel work of decode, extend and conv calls on `team`,
    /// threads the host already runs, instead of the worker pool, and splits
    /// the calls that would run on the calling thread
    /// ([`Self::with_inline_decode`]) over it too (inside torch: its OpenMP
    /// team, whose workers spin waiting for work, so they start on it at once;
    /// see [`HostTeam`]). Verify and replay calls keep the worker pool. Each
    /// task runs once, on one thread, so the results are the same bits.
    pub fn with_host_team(mut self, team: Arc<dyn HostTeam>) -> Self {
        self.team = Some(team);
        self
    }

    /// Whether a decode-step call over `state_bytes` of state runs on the
    /// calling thread ([`Self::with_inline_decode`]).
    fn runs_inline(&self, state_bytes: usize) -> bool {
        state_bytes <= self.inline_decode_bytes
    }

    /// A dispatcher with its own pool of `threads` worker threads.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("deltanet-cpu-{i}"))
            .build()
            .map_err(|e| Error::Device { backend: "cpu".into(), op: "thread pool".into(), message: e.to_string() })?;
        let mut d = Self::new();
        d.threads = Some(Arc::new(pool));
        Ok(d)
    }

    /// Worker threads the kernels run on.
    pub fn threads(&self) -> usize {
        self.threads.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// Runs `task(i)` for each of `tasks` independent tasks in parallel: on
    /// the host's team when it lent one ([`Self::with_host_team`]; each
    /// thread takes the next task in turn), else on the worker pool, one
    /// rayon piece per task. Each task runs once, so the same bits either way.
    fn for_each_task(&self, tasks: usize, task: impl Fn(usize) + Sync + Send) {
        match &self.team {
            Some(team) if tasks > 1 => team::run_tasks_dynamic(team.as_ref(), tasks, task),
            _ => self.install(|| (0..tasks).into_par_iter().with_max_len(1).for_each(task)),
        }
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.threads {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

pub(crate) fn delta_views<'a>(io: &'a mut DeltaIo<'_>, dims: ModelDims) -> Result<DeltaViews<'a>> {
    Ok(DeltaViews {
        q: In::new(&io.q)?,
        k: In::new(&io.k)?,
        v: In::new(&io.v)?,
        g: In::new(&io.g)?,
        beta: In::new(&io.beta)?,
        o: Out::new(&mut io.o)?,
        dims,
        params: io.params,
    })
}

/// Runs `f` with the state element type of the pool.
macro_rules! with_state_type {
    ($dtype:expr, $E:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $E = f32;
                $body
            }
            _ => {
                type $E = bf16;
                $body
            }
        }
    };
}
pub(crate) use with_state_type;

/// A conv call of at most this many (token, channel) pairs runs on the calling
/// thread: below a batch-1 decode of the models' smallest conv (6144
/// channels). A batch-1 decode's conv alone is as fast either way (2 threads:
/// the pool's round trip eats what the second thread saves), but inside a
/// layer a conv on the calling thread lets the workers park, and the delta
/// rule that follows pays to wake them: a whole batch-1 decode layer of the
/// Qwen3.5-35B-A3B shape took 131-150 us with the conv on the caller against
/// 117-129 us through the pool (2-core AVX2 VM).
const CONV_SERIAL: usize = 4096;

impl<L: StateLayout> CpuDispatcher<L> {
    /// Conv over channel blocks: one task per block of [`CONV_BLOCK`]
    /// channels runs `run` for every request of the call, so the block's
    /// weights are loaded once per call, not once per request; a call of at
    /// most [`CONV_SERIAL`] (token, channel) pairs, or any call on a
    /// dispatcher of one thread, runs its blocks in order on the calling
    /// thread.
    fn conv_blocks(&self, dims: &ModelDims, io: &mut ConvIo<'_>, run: impl Fn(&mut ConvBlock<'_, '_>) + Sync) -> Result<()> {
        self.conv_channel_blocks(dims.conv_dim(), dims.conv_width, io, false, run)
    }

    /// [`Self::conv_blocks`] over `cd` channels of width `width`; `inline`
    /// runs the blocks on the calling thread whatever the call's size (a
    /// conv update within [`Self::with_inline_decode`]'s bytes).
    fn conv_channel_blocks(
        &self,
        cd: usize,
        width: usize,
        io: &mut ConvIo<'_>,
        inline: bool,
        run: impl Fn(&mut ConvBlock<'_, '_>) + Sync,
    ) -> Result<()> {
        let (x, weight) = (In::new(&io.x)?, In::new(&io.weight)?);
        let bias = io.bias.as_ref().map(In::new).transpose()?;
        let out = Out::new(&mut io.out)?;
        // on a host team, whose threads take contiguous shares of the blocks, quarter
        // blocks (a channel's conv is the same arithmetic in any block, so the same bits):
        // a Qwen3.5-0.8B conv of 6144 channels is 3 whole blocks, 1 and 2 on two threads
        let size = if self.team.is_some() { CONV_BLOCK / 4 } else { CONV_BLOCK };
        let blocks = cd.div_ceil(size);
        let block = |b: usize| {
            let c0 = b * size;
            ConvBlock::with(c0, size.min(cd - c0), width, &weight, bias.as_ref(), x, out, &run);
        };
        if inline || self.team.is_some() {
            // on the host's team when it lent one, else the calling thread's call
            team::run_tasks(self.team.as_deref(), blocks, block);
            return Ok(());
        }
        if self.threads() == 1 || io.x.meta().shape()[0] * cd <= CONV_SERIAL {
            // a small call (a batch-1 decode) on the calling thread: the same
            // blocks, so the same bits; the rayon round trip (wake a worker,
            // park and wake the caller) took half its time
            (0..blocks).for_each(block);
            return Ok(());
        }
        self.install(|| (0..blocks).into_par_iter().for_each(block));
        Ok(())
    }

    /// causal-conv1d's `causal_conv1d_update` on a conv state the caller owns,
    /// for callers that keep their own conv cache (transformers, causal-conv1d
    /// users) instead of a pool: one token per sequence, `io.x` / `io.out`
    /// `[B, conv_dim]` (row `i` is sequence `i`), `io.weight` `[conv_dim, W]`,
    /// `state` `[B, conv_dim, state_len]` f32, contiguous, oldest input first,
    /// `state_len >= W-1`. Each output is SiLU of the conv of the newest W-1
    /// state columns and the token; each state row then shifts left by one and
    /// takes the token. The same arithmetic as a pool's conv update (the same
    /// bits as [`KernelDispatcher::conv_update`] on a pool holding the newest
    /// W-1 columns). A refused call writes nothing.
    pub fn conv_update_caller_state(&self, mut io: ConvIo<'_>, state: &mut [f32], state_len: usize) -> Result<()> {
        let ws = io.weight.meta().shape().to_vec();
        if ws.len() != 2 || ws[1] < 2 {
            return Err(Error::shape("conv_weight", &[ws.first().copied().unwrap_or(0), 4], &ws));
        }
        let (cd, width) = (ws[0], ws[1]);
        let rows = io.x.meta().shape().first().copied().unwrap_or(0);
        if rows == 0 {
            return Err(Error::EmptyBatch { what: "conv_update_caller_state" });
        }
        let (dev, inputs) = (self.caps.device, &self.caps.input_dtypes);
        io.x.meta().expect("x", dev, inputs, &[rows, cd])?;
        io.weight.meta().expect("conv_weight", dev, &[DType::F32], &[cd, width])?;
        if let Some(b) = &io.bias {
            b.meta().expect("conv_bias", dev, &[DType::F32], &[cd])?;
        }
        io.out.meta().expect_output("conv_out", dev, inputs, &[rows, cd])?;
        if state_len + 1 < width {
            return Err(Error::shape("conv_state", &[rows, cd, width - 1], &[rows, cd, state_len]));
        }
        if state.len() != rows * cd * state_len {
            return Err(Error::shape("conv_state", &[rows * cd * state_len], &[state.len()]));
        }
        let inline = self.runs_inline(std::mem::size_of_val(state));
        let st = RawBuf::new(bytemuck::cast_slice_mut(state));
        self.conv_channel_blocks(cd, width, &mut io, inline, |blk| {
            for i in 0..rows {
                let (off, n) = ((i * cd + blk.c0) * state_len, blk.n * state_len);
                // SAFETY: `typed` bounds-checks; rows `c0..c0 + n` of sequence `i` belong to this block's task alone.
                let rows_of_block = unsafe { std::slice::from_raw_parts_mut(st.typed::<f32>(off * 4, n), n) };
                // the next sequence's rows of this block, prefetched while these are updated
                let next = if i + 1 < rows { st.typed::<f32>(off * 4 + cd * state_len * 4, n) } else { std::ptr::null_mut() };
                blk.update_rows(rows_of_block, state_len, i, next);
            }
        })
    }

    /// One decode step per (sequence, value head) task, `tasks` of them: task
    /// `i` advances the state head at `head(i)` in place with token `i / HV`
    /// of `views`, prefetching task `i + 1`'s inputs and head (`head` is
    /// called one past the last task and must give null there). On the
    /// calling thread when `inline`, else on the worker pool. What a pool
    /// decode and a caller-state decode share, so both give the same bits.
    ///
    /// # Safety
    /// For `i < tasks`, `head(i)` points to `K*V` elements of `E` that no
    /// other task and no other thread touches during the call.
    unsafe fn decode_heads<E: simd::StateElem>(
        &self,
        views: &DeltaViews<'_>,
        tasks: usize,
        inline: bool,
        head: impl Fn(usize) -> *mut E + Sync,
    ) {
        let hv = views.dims.num_v_heads;
        let run = |task: usize| {
            let (i, h) = (task / hv, task % hv);
            let (st, next) = (head(task), head(task + 1));
            if task + 1 < tasks {
                views.prefetch_step((task + 1) / hv, (task + 1) % hv);
            }
            // SAFETY: the head at `st` is this task's alone (the caller's contract); in
            // place; `next` is only prefetched.
            unsafe { steps_head::<E>(L::KIND, StepInputs::Call { io: views, tokens: &[i], record: &[] }, h, &[None], st, &[st], next) };
        };
        if inline || self.team.is_some() {
            // on the host's team when it lent one (contiguous shares, so each head's
            // prefetch hint is the head its thread runs next), else the calling thread's call
            team::run_tasks(self.team.as_deref(), tasks, run)
        } else if self.threads() == 1 {
            // here, not installed in an own pool (that would hand the work to its
            // worker: with one worker, a round trip of ~15 us per call for nothing)
            (0..tasks).for_each(run)
        } else {
            self.install(|| (0..tasks).into_par_iter().for_each(run))
        }
    }

    /// A decode step on a recurrent state the caller owns, for engines that
    /// keep their own state buffers instead of a pool (an inference engine's
    /// cache passing its state tensor to `fused_recurrent_gated_delta_rule`):
    /// one token per sequence, N sequences, `io`'s tensors `[N, ...]` as for
    /// [`KernelDispatcher::decode`] (row `i` of q, k, v, g, beta and o is
    /// sequence `i`), checked against `dims`.
    ///
    /// `state` is f32 `[N, HV, K, V]` in this dispatcher's layout `L`: per
    /// head `[K, V]` ([`KMajor`]) or `[V, K]` ([`VMajor`]), sequence `i`'s
    /// heads at `i * HV*K*V`. It is advanced in place, no copy in or out.
    ///
    /// Each (sequence, head) runs the very step a pool decode runs, with the
    /// same threading ([`Self::with_inline_decode`] included): outputs and
    /// states are the same bits as [`KernelDispatcher::decode`] on an f32 pool
    /// holding the same states. The tensors are validated as a pool decode's
    /// are (device, dtype, shape, strides, a non-overlapping output; dims
    /// within the backend's limits), and `state` must hold exactly
    /// `N*HV*K*V` values; a refused call writes nothing. A pool's optional
    /// finite check has no counterpart here (there is no pool to enable it).
    pub fn decode_caller_state(&self, dims: &ModelDims, mut io: DeltaIo<'_>, state: &mut [f32]) -> Result<()> {
        let rows = io.q.meta().shape().first().copied().unwrap_or(0);
        if rows == 0 {
            return Err(Error::EmptyBatch { what: "decode_caller_state" });
        }
        dims.validate()?;
        // the checks a pool decode gets from core: an f32 state of these dims on this backend, then every tensor
        self.caps.check_pool_config(&PoolConfig::new(1, rows, *dims))?;
        io.validate(&self.caps, dims, rows)?;
        let want = size::product("decode_caller_state N*HV*K*V", &[rows, dims.state_elems()])?;
        if state.len() != want {
            return Err(Error::shape("state", &[want], &[state.len()]));
        }
        let views = delta_views(&mut io, *dims)?;
        let inline = self.runs_inline(std::mem::size_of_val(state));
        let (tasks, per) = (rows * dims.num_v_heads, dims.head_k_dim * dims.head_v_dim);
        let st = RawBuf::new(bytemuck::cast_slice_mut(state));
        let head = |task: usize| if task < tasks { st.typed::<f32>(task * per * 4, per) } else { std::ptr::null_mut() };
        // SAFETY: task i's head is elements [i*K*V, (i+1)*K*V) of `state`, which the
        // caller lent us mutably for the call; null past the last task.
        unsafe { self.decode_heads::<f32>(&views, tasks, inline, head) };
        Ok(())
    }
}

impl<L: StateLayout> Kernels for CpuDispatcher<L> {
    type Layout = L;
    type Memory = HostMemory;

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn memory(&self) -> &HostMemory {
        &HostMemory
    }

    fn run_gate(&self, call: GateCall<'_>) -> Result<()> {
        let (t, hv) = (call.tokens(), call.dims().num_v_heads);
        let mut io = call.into_io();
        let (a, b, al, db) = (In::new(&io.a)?, In::new(&io.b)?, In::new(&io.a_log)?, In::new(&io.dt_bias)?);
        let (g, beta) = (Out::new(&mut io.g)?, Out::new(&mut io.beta)?);
        gate::gate(&a, &b, &al, &db, &g, &beta, t, hv);
        Ok(())
    }

    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        let mut io = call.into_io();
        pool.checked_parts(ticket, |parts| {
            let conv = RawBuf::new(parts.conv.bytes_mut());
            let (cdt, w1, es) = (g.config.conv_dtype, dims.conv_state_len(), g.config.conv_dtype.size());
            self.conv_blocks(&dims, &mut io, |blk| {
                let c0 = blk.c0;
                let off = |slot: usize| g.conv_offset(layer, slot) + c0 * w1 * es;
                for s in 0..batch.num_seqs() {
                    let slot = batch.slots()[s].index();
                    if batch.seq_len(s) == 1 && batch.has_initial_state()[s] && batch.snapshots_of(s).next().is_none() {
                        // a decode in a mixed step
                        blk.update_in_place(&conv, cdt, off(slot), batch.seq_range(s).start);
                        continue;
                    }
                    if batch.has_initial_state()[s] {
                        blk.load(&conv, cdt, off(slot));
                    } else {
                        blk.clear();
                    }
                    for (i, t) in batch.seq_range(s).enumerate() {
                        blk.step(t);
                        for sn in batch.snapshots_of(s).filter(|sn| sn.position == i + 1) {
                            blk.store(&conv, cdt, off(sn.slot.index()));
                        }
                    }
                    blk.store(&conv, cdt, off(slot));
                }
            })
        })
    }

    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        let mut io = call.into_io();
        pool.checked_parts(ticket, |parts| {
            let conv = RawBuf::new(parts.conv.bytes_mut());
            let (cdt, w1, es) = (g.config.conv_dtype, dims.conv_state_len(), g.config.conv_dtype.size());
            let inline = self.runs_inline(batch.num_seqs() * dims.conv_dim() * w1 * es);
            self.conv_channel_blocks(dims.conv_dim(), dims.conv_width, &mut io, inline, |blk| {
                for (i, slot) in batch.slots().iter().enumerate() {
                    blk.update_in_place(&conv, cdt, g.conv_offset(layer, slot.index()) + blk.c0 * w1 * es, i);
                }
            })
        })
    }

    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        let mut io = call.into_io();
        pool.checked_parts(ticket, |parts| {
            let windows = RawBuf::new(parts.windows.ok_or(Error::NoSpeculativeBuffers)?.bytes_mut());
            let conv = RawBuf::new(parts.conv.bytes_mut());
            let (cdt, w1, es, dn) = (g.config.conv_dtype, dims.conv_state_len(), g.config.conv_dtype.size(), batch.draft());
            self.conv_blocks(&dims, &mut io, |blk| {
                let blk_off = blk.c0 * w1 * es;
                for (i, slot) in batch.slots().iter().enumerate() {
                    let slot = slot.index();
                    for t in 0..dn {
                        match batch.parent(i, t) {
                            // a chain's step t - 1 is still in the window, exactly as stored (f32)
                            Some(p) if p + 1 == t && cdt == DType::F32 => {}
                            None => blk.load(&conv, cdt, g.conv_offset(layer, slot) + blk_off),
                            Some(p) => blk.load(&windows, cdt, g.window_offset(layer, slot, p) + blk_off),
                        }
                        blk.step(i * dn + t);
                        blk.store(&windows, cdt, g.window_offset(layer, slot, t) + blk_off);
                    }
                }
            })
        })
    }

    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        let mut io = call.into_io();
        let views = delta_views(&mut io, dims)?;
        pool.checked_parts(ticket, |parts| {
            let tgt = ExtendTarget { temporal: RawBuf::new(parts.temporal.bytes_mut()), geometry: &g, layer, batch };
            let (hk, hv, per) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim * dims.head_v_dim);
            // a 1-token sequence continuing its state (a decode in a mixed step) is a
            // decode: in place on the pool, one task per value head, the same bits
            // as the chunk of one `extend_head` would run for it
            let is_step = |s: usize| batch.seq_len(s) == 1 && batch.has_initial_state()[s] && batch.snapshots_of(s).next().is_none();
            // longest sequences first, so the tail of the parallel loop is short; the steps last
            let mut order: Vec<usize> = (0..batch.num_seqs()).collect();
            order.sort_by_key(|&s| (is_step(s), std::cmp::Reverse(batch.seq_len(s))));
            let long = order.iter().take_while(|&&s| !is_step(s)).count();
            let steps = &order[long..];
            // byte offset of (sequence s, value head h) for elements of `size` bytes
            let head = |s: usize, h: usize, size: usize| g.temporal_offset(layer, batch.slots()[s].index()) + h * per * size;
            with_state_type!(g.config.state_dtype, E => {
                // every task taken on its own: the chunked tasks all sit at the front, and
                // rayon's default split (a few leaves per thread, each run in order) gave one
                // thread every prefill task of a mixed step and the other only the steps
                self.for_each_task(long * hk + steps.len() * hv, |task| {
                    if task < long * hk {
                        // one task per (sequence, key head): its value heads share q, k and [Q; K] K^T
                        return extend_head::<E>(L::KIND, &views, &tgt, order[task / hk], task % hk);
                    }
                    let i = task - long * hk;
                    let (s, h) = (steps[i / hv], i % hv);
                    let size = std::mem::size_of::<E>();
                    let st = tgt.temporal.typed::<E>(head(s, h, size), per);
                    let next = match steps.get((i + 1) / hv) {
                        Some(&s2) => {
                            views.prefetch_step(batch.seq_range(s2).start, (i + 1) % hv);
                            tgt.temporal.typed::<E>(head(s2, (i + 1) % hv, size), per)
                        }
                        None => std::ptr::null_mut(),
                    };
                    // SAFETY: (slot, head) is this task's alone (slots are distinct); in place;
                    // `next` is only prefetched.
                    unsafe { steps_head::<E>(L::KIND, StepInputs::Call { io: &views, tokens: &[batch.seq_range(s).start], record: &[] }, h, &[None], st, &[st], next) };
                })
            });
            Ok(())
        })
    }

    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        let mut io = call.into_io();
        let views = delta_views(&mut io, dims)?;
        pool.checked_parts(ticket, |parts| {
            let temporal = RawBuf::new(parts.temporal.bytes_mut());
            let inline = self.runs_inline(batch.num_seqs() * dims.state_elems() * g.config.state_dtype.size());
            let tasks = batch.num_seqs() * dims.num_v_heads;
            with_state_type!(g.config.state_dtype, E => {
                let head = |task: usize| main_head::<E>(&temporal, &g, layer, batch.slots(), task);
                // SAFETY: task i's (slot, head) is its alone (the batch's slots are distinct);
                // `main_head` is null past the last task.
                unsafe { self.decode_heads::<E>(&views, tasks, inline, head) }
            });
            Ok(())
        })
    }

    fn run_conv_verify_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        self.conv_verify_replay(pool, call)
    }

    fn run_verify_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        self.verify_replay(pool, call)
    }

    fn run_commit_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        self.commit_replay(pool, call)
    }

    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        let mut io = call.into_io();
        let views = delta_views(&mut io, dims)?;
        pool.checked_parts(ticket, |parts| {
            let scratch = RawBuf::new(parts.scratch.ok_or(Error::NoSpeculativeBuffers)?.bytes_mut());
            let temporal = RawBuf::new(parts.temporal.bytes_mut());
            let (hv, per, dn) = (dims.num_v_heads, dims.head_k_dim * dims.head_v_dim, batch.draft());
            with_state_type!(g.config.state_dtype, E => self.install(|| {
                // per-task step lists live in vectors reused across the tasks of one rayon job
                let lists = || (Vec::new(), Vec::new(), Vec::<*mut E>::new());
                (0..batch.num_seqs() * hv).into_par_iter().for_each_init(lists, |(tokens, parents, dsts), task| {
                    let (i, h) = (task / hv, task % hv);
                    let slot = batch.slots()[i].index();
                    let head = h * per * std::mem::size_of::<E>();
                    tokens.clear();
                    tokens.extend((0..dn).map(|t| i * dn + t));
                    parents.clear();
                    parents.extend((0..dn).map(|t| batch.parent(i, t)));
                    dsts.clear();
                    dsts.extend((0..dn).map(|t| scratch.typed::<E>(g.scratch_offset(layer, slot, t) + head, per)));
                    let src = main_head::<E>(&temporal, &g, layer, batch.slots(), task);
                    let next = main_head::<E>(&temporal, &g, layer, batch.slots(), task + 1);
                    // SAFETY: this task alone touches (slot, head) of the main state (read only)
                    // and of every scratch step of the slot; the scratch steps are disjoint;
                    // `next` is only prefetched.
                    unsafe { steps_head::<E>(L::KIND, StepInputs::Call { io: &views, tokens, record: &[] }, h, parents, src, dsts, next) };
                })
            }));
            Ok(())
        })
    }
}

/// The main state of task `task` = (sequence `task / HV`, value head
/// `task % HV`) in a per-(sequence, head) loop over `slots`, or null past the
/// last task. Decode and verify pass task + 1's head as a prefetch hint: rayon
/// hands each thread a contiguous range, so it is most likely the next head
/// this thread runs.
pub(crate) fn main_head<E>(temporal: &RawBuf, g: &PoolGeometry, layer: usize, slots: &[Slot], task: usize) -> *mut E {
    let dims = g.config.dims;
    let (hv, per) = (dims.num_v_heads, dims.head_k_dim * dims.head_v_dim);
    match slots.get(task / hv) {
        Some(slot) => temporal.typed::<E>(g.temporal_offset(layer, slot.index()) + (task % hv) * per * std::mem::size_of::<E>(), per),
        None => std::ptr::null_mut(),
    }
}
