//! The one validation path. Every public entry point — the typed
//! [`KernelDispatcher`](crate::KernelDispatcher) methods, the layer forward,
//! and through them the runtime, C and Python APIs — validates its call here,
//! once, in one order, and hands the backend a [`Checked`] call that only this
//! module can construct. A backend's kernels ([`Kernels`](crate::Kernels))
//! take nothing else, so a new backend cannot forget a check and none checks
//! twice.
//!
//! The order, for every backend: the batch belongs to the pool and names only
//! slots allocated under their current generation; the layer exists; the
//! pool's configuration is one the backend's capabilities allow (a pool made
//! under other capabilities never reaches a kernel that cannot run it); a
//! commit has a current verify of each slot; every tensor (device, dtype,
//! shape, strides, output overlap); with the pool's finite check on, no
//! non-finite input or starting state. A refused call has written nothing.

use crate::access::KernelAccess;
use crate::batch::CommitBatch;
use crate::capabilities::Capabilities;
use crate::dims::ModelDims;
use crate::error::{Error, Result};
use crate::kernel_io::{ConvIo, DeltaIo, GateIo};
use crate::layout::StateLayout;
use crate::memory::DeviceMemory;
use crate::pool::{MambaStatePool, PoolGeometry, StatePool};

/// Proof that core validated one access (`KernelAccess`) of one layer of one
/// pool: what a kernel hands [`StatePool::checked_parts`] to reach the
/// pool's buffers. Only core makes one.
#[derive(Debug, Clone, Copy)]
pub struct Ticket<'c> {
    pool: u64,
    layer: usize,
    access: KernelAccess<'c>,
    geometry: PoolGeometry,
}

impl<'c> Ticket<'c> {
    /// Checks `access` of `layer` against `pool` and `caps` (the order of the module docs, up to the tensors).
    pub(crate) fn check<M: DeviceMemory, L: StateLayout>(
        caps: &Capabilities,
        pool: &StatePool<M, L>,
        layer: usize,
        access: KernelAccess<'c>,
    ) -> Result<Self> {
        access.check_pool(pool)?;
        let geometry = *pool.geometry();
        geometry.check_layer(layer)?;
        if geometry.conv_layout != caps.conv_layout {
            return Err(Error::Unsupported {
                backend: caps.backend.clone(),
                reason: format!("a pool with a {:?} conv state (the backend's is {:?})", geometry.conv_layout, caps.conv_layout),
            });
        }
        caps.check_pool_config(&geometry.config)?;
        if let KernelAccess::Commit(b) = access {
            pool.check_current_verifies(layer, b)?;
        }
        Ok(Ticket { pool: pool.id(), layer, access, geometry })
    }

    /// The same check for another access to the same slots (the layer
    /// forward's conv and delta rule: `ConvVerify` and `Verify` of one batch).
    pub(crate) fn with_access(self, access: KernelAccess<'c>) -> Self {
        Ticket { access, ..self }
    }
    /// The id of the pool it was checked against.
    pub(crate) fn pool_id(&self) -> u64 {
        self.pool
    }
    /// The layer.
    pub fn layer(&self) -> usize {
        self.layer
    }
    /// The access (which kernel, which batch).
    pub fn access(&self) -> KernelAccess<'c> {
        self.access
    }
    /// The pool's geometry.
    pub fn geometry(&self) -> &PoolGeometry {
        &self.geometry
    }
}

/// A kernel call core has validated: the batch `B` of one layer of one pool
/// and the call's tensors `Io`. Backends read it and reach the pool with its
/// [`ticket`](Self::ticket).
#[derive(Debug)]
pub struct Checked<'c, B, Io> {
    ticket: Ticket<'c>,
    batch: &'c B,
    io: Io,
}

impl<'c, B, Io> Checked<'c, B, Io> {
    /// A call whose ticket and tensors were checked together (the layer forward checks its three stages first).
    pub(crate) fn trusted(ticket: Ticket<'c>, batch: &'c B, io: Io) -> Self {
        Checked { ticket, batch, io }
    }
    /// The ticket for [`StatePool::checked_parts`].
    pub fn ticket(&self) -> Ticket<'c> {
        self.ticket
    }
    /// The layer.
    pub fn layer(&self) -> usize {
        self.ticket.layer
    }
    /// The batch.
    pub fn batch(&self) -> &'c B {
        self.batch
    }
    /// The pool's geometry.
    pub fn geometry(&self) -> &PoolGeometry {
        &self.ticket.geometry
    }
    /// The model dims of the pool.
    pub fn dims(&self) -> ModelDims {
        self.ticket.geometry.config.dims
    }
    /// The tensors.
    pub fn io(&self) -> &Io {
        &self.io
    }
    /// The tensors, to take views of the outputs.
    pub fn io_mut(&mut self) -> &mut Io {
        &mut self.io
    }
    /// The tensors, by value.
    pub fn into_io(self) -> Io {
        self.io
    }
}

impl<'c, B, Io> Checked<'c, B, Io> {
    /// Checks the access, then the tensors with `validate` (given the pool's dims).
    fn validated<M: DeviceMemory, L: StateLayout>(
        caps: &Capabilities,
        pool: &StatePool<M, L>,
        (layer, access, batch): (usize, KernelAccess<'c>, &'c B),
        io: Io,
        validate: impl FnOnce(&Io, &ModelDims) -> Result<()>,
    ) -> Result<Self> {
        let ticket = Ticket::check(caps, pool, layer, access)?;
        validate(&io, &ticket.geometry.config.dims)?;
        Ok(Checked { ticket, batch, io })
    }
}

impl<'c, B> Checked<'c, B, ConvIo<'c>> {
    /// Validates a conv call of `tokens` tokens.
    pub(crate) fn conv<M: DeviceMemory, L: StateLayout>(
        caps: &Capabilities,
        pool: &StatePool<M, L>,
        call: (usize, KernelAccess<'c>, &'c B),
        tokens: usize,
        io: ConvIo<'c>,
    ) -> Result<Self> {
        Self::validated(caps, pool, call, io, |io, dims| io.validate(caps, dims, tokens))
    }
}

impl<'c, B> Checked<'c, B, DeltaIo<'c>> {
    /// Validates a delta-rule call of `tokens` tokens (and, with the pool's finite check on, its values).
    pub(crate) fn delta<M: DeviceMemory, L: StateLayout>(
        caps: &Capabilities,
        pool: &StatePool<M, L>,
        call: (usize, KernelAccess<'c>, &'c B),
        tokens: usize,
        io: DeltaIo<'c>,
    ) -> Result<Self> {
        let (layer, access, _) = call;
        Self::validated(caps, pool, call, io, |io, dims| {
            io.validate(caps, dims, tokens)?;
            crate::finite::check_delta(pool, layer, access, io)
        })
    }
}

impl<'c> Checked<'c, CommitBatch, ()> {
    /// Validates a commit (including a current verify of every slot).
    pub(crate) fn commit<M: DeviceMemory, L: StateLayout>(
        caps: &Capabilities,
        pool: &StatePool<M, L>,
        layer: usize,
        batch: &'c CommitBatch,
    ) -> Result<Self> {
        Ok(Checked { ticket: Ticket::check(caps, pool, layer, KernelAccess::Commit(batch))?, batch, io: () })
    }
}

/// A gate call core has validated (the gate reads no pool).
#[derive(Debug)]
pub struct GateCall<'a> {
    dims: ModelDims,
    tokens: usize,
    io: GateIo<'a>,
}

impl<'a> GateCall<'a> {
    /// Validates `io` for `dims` against `caps`, with T from `io.a`.
    pub(crate) fn check(caps: &Capabilities, dims: &ModelDims, io: GateIo<'a>) -> Result<Self> {
        dims.validate()?;
        caps.limits.check(&caps.backend, dims)?;
        let tokens = io.tokens();
        io.validate(caps, dims, tokens)?;
        Ok(GateCall { dims: *dims, tokens, io })
    }
    /// A gate call the layer forward checked with its other stages.
    pub(crate) fn trusted(dims: ModelDims, tokens: usize, io: GateIo<'a>) -> Self {
        GateCall { dims, tokens, io }
    }
    /// The model dims.
    pub fn dims(&self) -> &ModelDims {
        &self.dims
    }
    /// Tokens T.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// The tensors.
    pub fn io(&self) -> &GateIo<'a> {
        &self.io
    }
    /// The tensors, to take views of the outputs.
    pub fn io_mut(&mut self) -> &mut GateIo<'a> {
        &mut self.io
    }
    /// The tensors, by value.
    pub fn into_io(self) -> GateIo<'a> {
        self.io
    }
}
