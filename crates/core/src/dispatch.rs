//! The dispatcher contract (DESIGN §4), in two halves:
//! - [`Kernels`], what a backend implements: its capabilities, its memory, and
//!   one kernel per operation over a call core has already validated
//!   ([`Checked`], [`GateCall`]);
//! - [`KernelDispatcher`], what an engine calls: every operation validated
//!   once ([`crate::checked`]) and then run by the backend's kernel. It is
//!   implemented for every [`Kernels`] by core and cannot be implemented (or
//!   its checks skipped) by a backend.
//!
//! Because every method takes `StatePool<Self::Memory, Self::Layout>`, handing
//! a V-major pool to a K-major kernel does not compile.

use crate::access::KernelAccess;
use crate::batch::{CommitBatch, DecodeBatch, ExtendBatch, VerifyBatch};
use crate::capabilities::Capabilities;
use crate::checked::{Checked, GateCall};
use crate::dims::ModelDims;
use crate::error::Result;
use crate::kernel_io::{ConvIo, DeltaIo, GateIo};
use crate::layout::StateLayout;
use crate::memory::DeviceMemory;
use crate::pool::{PoolConfig, StatePool};

/// The pool type a dispatcher works on.
pub type PoolOf<D> = StatePool<<D as Kernels>::Memory, <D as Kernels>::Layout>;

/// A backend's kernels. Each receives a call core has validated (pool, layer,
/// batch, tensors, capabilities; see [`crate::checked`]) and reaches the
/// pool's buffers only through [`StatePool::checked_parts`] with the call's
/// ticket. A kernel refuses nothing that validation accepts except for device
/// failures ([`crate::Error::Device`], [`crate::Error::OutOfMemory`]).
///
/// Engines do not call these: they call the [`KernelDispatcher`] methods of
/// the same names without the `run_` prefix.
pub trait Kernels: Send + Sync {
    /// The backend's native recurrent layout.
    type Layout: StateLayout;
    /// The backend's memory.
    type Memory: DeviceMemory;

    /// What the backend supports.
    fn capabilities(&self) -> &Capabilities;
    /// Its memory (for pools and workspaces).
    fn memory(&self) -> &Self::Memory;

    /// Fused gate over `T` tokens.
    fn run_gate(&self, call: GateCall<'_>) -> Result<()>;
    /// Conv over packed sequences: starts from each slot's conv state when
    /// `has_initial_state` (else zeros), leaves the last W-1 raw inputs in it,
    /// and writes snapshot conv states.
    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()>;
    /// Conv of one token per request, updating the slot's conv state.
    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()>;
    /// Conv of draft tokens: step `t` convolves on its parent's window and
    /// writes its window to the scratch; the slot's conv state is untouched.
    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()>;
    /// Chunked delta rule over packed sequences, in place on the slots, with snapshots.
    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()>;
    /// One token per request, in place.
    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()>;
    /// Draft tokens: each step from its parent's state, written to scratch; main state untouched.
    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()>;
    /// Copies each committed request's accepted scratch step into its slot
    /// (and snapshot slot), iterating [`CommitBatch::commits`] so skipped
    /// requests are never touched. The default copies through the pool's
    /// memory; backends may fuse it.
    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        pool.commit_checked(&call)
    }

    /// [`SpecMode::Replay`](crate::SpecMode::Replay) conv of draft tokens:
    /// each step convolves on its root path's window (the slot's conv state
    /// followed by its ancestors' inputs) and its raw input is recorded in the
    /// pool; the slot's conv state is untouched. Only called on replay pools,
    /// which only a backend listing the mode in its capabilities can make.
    fn run_conv_verify_replay(&self, _pool: &mut PoolOf<Self>, _call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        Err(crate::spec::replay_unsupported(&self.capabilities().backend))
    }
    /// Replay verify: every draft step's output, each from its root path
    /// applied to the slot's state, no state written; the k, v, g, beta each
    /// step used are recorded in the pool for the commit.
    fn run_verify_replay(&self, _pool: &mut PoolOf<Self>, _call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        Err(crate::spec::replay_unsupported(&self.capabilities().backend))
    }
    /// Replay commit: the recorded steps of the path root → `a` applied to
    /// each slot's state in place (the decode's arithmetic), its conv state
    /// shifted by the path's inputs, and both copied to the snapshot slot if named.
    fn run_commit_replay(&self, _pool: &mut PoolOf<Self>, _call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        Err(crate::spec::replay_unsupported(&self.capabilities().backend))
    }
}

/// The operations an engine calls on a backend, each validated once by core
/// and then run by the backend's [`Kernels`]; on error nothing was written.
/// Implemented for every [`Kernels`]; not implementable otherwise.
pub trait KernelDispatcher: Kernels {
    /// Creates a pool in this backend's layout and memory.
    fn new_pool(&self, config: PoolConfig) -> Result<PoolOf<Self>> {
        StatePool::new(self.memory().clone(), config, self.capabilities())
    }

    /// Fused gate over `T` tokens (T from `io.a`).
    fn gate(&self, dims: &ModelDims, io: GateIo<'_>) -> Result<()> {
        let _span = tracing::debug_span!("gate", backend = %self.capabilities().backend).entered();
        self.run_gate(GateCall::check(self.capabilities(), dims, io)?)
    }
    /// Conv over packed sequences ([`Kernels::run_conv_extend`]).
    fn conv_extend(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &ExtendBatch, io: ConvIo<'_>) -> Result<()> {
        let _span = tracing::debug_span!("conv_extend", backend = %self.capabilities().backend, layer, tokens = batch.tokens()).entered();
        let call = Checked::conv(self.capabilities(), pool, (layer, KernelAccess::Extend(batch), batch), batch.tokens(), io)?;
        self.run_conv_extend(pool, call)
    }
    /// Conv of one token per request ([`Kernels::run_conv_update`]).
    fn conv_update(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &DecodeBatch, io: ConvIo<'_>) -> Result<()> {
        let _span =
            tracing::debug_span!("conv_update", backend = %self.capabilities().backend, layer, requests = batch.num_seqs()).entered();
        let call = Checked::conv(self.capabilities(), pool, (layer, KernelAccess::Decode(batch), batch), batch.tokens(), io)?;
        self.run_conv_update(pool, call)
    }
    /// Conv of draft tokens, in the pool's speculative mode
    /// ([`Kernels::run_conv_verify`] or [`Kernels::run_conv_verify_replay`]).
    fn conv_verify(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &VerifyBatch, io: ConvIo<'_>) -> Result<()> {
        let _span =
            tracing::debug_span!("conv_verify", backend = %self.capabilities().backend, layer, requests = batch.num_seqs()).entered();
        let call = Checked::conv(self.capabilities(), pool, (layer, KernelAccess::ConvVerify(batch), batch), batch.tokens(), io)?;
        crate::spec::conv_verify(self, pool, call)
    }
    /// Chunked delta rule over packed sequences ([`Kernels::run_extend`]).
    fn extend(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &ExtendBatch, io: DeltaIo<'_>) -> Result<()> {
        let _span =
            tracing::debug_span!("extend", backend = %self.capabilities().backend, layer, sequences = batch.num_seqs(), tokens = batch.tokens())
                .entered();
        let call = Checked::delta(self.capabilities(), pool, (layer, KernelAccess::Extend(batch), batch), batch.tokens(), io)?;
        self.run_extend(pool, call)
    }
    /// One token per request, in place ([`Kernels::run_decode`]).
    fn decode(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &DecodeBatch, io: DeltaIo<'_>) -> Result<()> {
        let _span = tracing::debug_span!("decode", backend = %self.capabilities().backend, layer, requests = batch.num_seqs()).entered();
        let call = Checked::delta(self.capabilities(), pool, (layer, KernelAccess::Decode(batch), batch), batch.tokens(), io)?;
        self.run_decode(pool, call)
    }
    /// Draft tokens, in the pool's speculative mode ([`Kernels::run_verify`]
    /// or [`Kernels::run_verify_replay`]).
    fn verify(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &VerifyBatch, io: DeltaIo<'_>) -> Result<()> {
        let _span = tracing::debug_span!("verify", backend = %self.capabilities().backend, layer, requests = batch.num_seqs()).entered();
        let call = Checked::delta(self.capabilities(), pool, (layer, KernelAccess::Verify(batch), batch), batch.tokens(), io)?;
        crate::spec::verify(self, pool, call)
    }
    /// The commit an engine calls after a verify: the accepted step of each
    /// request becomes its state, in the pool's speculative mode
    /// ([`Kernels::run_commit`] or [`Kernels::run_commit_replay`]); a skipped
    /// request (accepted `None`) keeps its state and its current verify ([`CommitBatch`]).
    fn commit(&self, pool: &mut PoolOf<Self>, layer: usize, batch: &CommitBatch) -> Result<()> {
        let _span = tracing::debug_span!("commit", backend = %self.capabilities().backend, layer, requests = batch.slots().len()).entered();
        crate::spec::commit(self, pool, Checked::commit(self.capabilities(), pool, layer, batch)?)
    }
}

impl<K: Kernels + ?Sized> KernelDispatcher for K {}
