//! Each operation's launch, from a validated call and the device tables of a
//! step plan: the one body behind both the dispatcher's batch-only entry
//! points (a one-use plan) and [`Planned`](crate::Planned) (the step's plan).
//! Nothing here allocates, copies to the device or waits for it.

use crate::args::{dtype_code, CommitArgs, ConvArgs, ExtendArgs, RecurrentArgs};
use crate::extend_tc::ExtendTables;
use crate::kernels::{Kernel, CHUNK, ROWS_PER_BLOCK};
use crate::launcher::Launcher;
use crate::step_plan::PlanAddrs;
use crate::CudaDispatcher;
use deltanet_core::{
    plan, Checked, CommitBatch, ConvIo, DecodeBatch, DeltaIo, DeviceMemory, Error, ExtendBatch, PoolOf, Result, VerifyBatch,
};

impl<L: Launcher> CudaDispatcher<L> {
    pub(crate) fn conv_extend_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>, t: &PlanAddrs) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let a = ConvArgs {
                state: m.addr(parts.conv) + g.conv_offset(layer, 0) as u64,
                seqs: t.tables[0],
                snapshots: t.tables[1],
                mode: 0,
                ..self.conv_args(&dims, io, g.config.conv_dtype)
            };
            let bt = self.launcher.block_threads(Kernel::Conv) as usize;
            self.run((dims.conv_dim().div_ceil(bt), batch.num_seqs(), 1), &a)
        })
    }

    pub(crate) fn conv_update_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>, t: &PlanAddrs) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let a = ConvArgs {
                state: m.addr(parts.conv) + g.conv_offset(layer, 0) as u64,
                seqs: t.tables[0],
                mode: 1,
                ..self.conv_args(&dims, io, g.config.conv_dtype)
            };
            let bt = self.launcher.block_threads(Kernel::Conv) as usize;
            self.run((dims.conv_dim().div_ceil(bt), batch.num_seqs(), 1), &a)
        })
    }

    pub(crate) fn conv_verify_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>, t: &PlanAddrs) -> Result<()> {
        self.conv_verify_in_mode(pool, call, t, 2)
    }

    /// The conv of a verify in `dnk_conv`'s `mode`: 2 writes each draft's window
    /// (scratch), 3 records each draft's raw input (replay); the arguments are the same.
    pub(crate) fn conv_verify_in_mode(
        &self,
        pool: &mut PoolOf<Self>,
        call: Checked<'_, VerifyBatch, ConvIo<'_>>,
        t: &PlanAddrs,
        mode: i64,
    ) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let windows = parts.windows.ok_or(Error::NoSpeculativeBuffers)?;
            let a = ConvArgs {
                state: m.addr(parts.conv) + g.conv_offset(layer, 0) as u64,
                windows: m.addr(windows) + g.window_offset(layer, 0, 0) as u64,
                seqs: t.tables[0],
                parents: t.tables[1],
                draft: batch.draft() as i64,
                mode,
                ..self.conv_args(&dims, io, g.config.conv_dtype)
            };
            let bt = self.launcher.block_threads(Kernel::Conv) as usize;
            self.run((dims.conv_dim().div_ceil(bt), batch.num_seqs(), 1), &a)
        })
    }

    pub(crate) fn extend_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>, t: &PlanAddrs) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let tiles = dims.head_v_dim.div_ceil(crate::kernels::EXTEND_ROWS);
        let m = self.launcher.memory();
        if let Some(precision) = self.extend_precision(io, g.config.state_dtype)? {
            // the plan sized its workspace for this kernel too (`extend_may_use_tc`)
            let mut chunks_per_seq = vec![0; batch.num_seqs()];
            for p in plan::extend_pieces(batch, Some(CHUNK)) {
                chunks_per_seq[p.seq] += 1;
            }
            let tables = ExtendTables { seqs: t.tables[2], chunks: t.tables[3], snapshot_slots: t.tables[4], chunks_per_seq };
            return pool.checked_parts(ticket, |parts| {
                let state = m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64;
                self.run_extend_tc(self.delta_args(&dims, io), &tables, t.workspace, state, g.config.state_dtype, precision)
            });
        }
        pool.checked_parts(ticket, |parts| {
            let a = ExtendArgs {
                io: self.delta_args(&dims, io),
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                seqs: t.tables[2],
                chunks: t.tables[3],
                snapshot_slots: t.tables[4],
                workspace: t.workspace,
                seqs_count: batch.num_seqs() as i64,
                state_dtype: dtype_code(g.config.state_dtype),
            };
            self.run((dims.num_v_heads, t.extend_rows, tiles), &a)
        })
    }

    pub(crate) fn decode_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>, t: &PlanAddrs) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let a = RecurrentArgs {
                io: self.delta_args(&dims, io),
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                scratch: 0,
                slots: t.tables[1],
                parents: 0,
                draft: 1,
                state_dtype: dtype_code(g.config.state_dtype),
                mode: 0,
            };
            self.run((dims.head_v_dim.div_ceil(ROWS_PER_BLOCK), dims.num_v_heads, batch.num_seqs()), &a)
        })
    }

    pub(crate) fn verify_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>, t: &PlanAddrs) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let scratch = parts.scratch.ok_or(Error::NoSpeculativeBuffers)?;
            let a = RecurrentArgs {
                io: self.delta_args(&dims, io),
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                scratch: m.addr(scratch) + g.scratch_offset(layer, 0, 0) as u64,
                slots: t.tables[2],
                parents: t.tables[1],
                draft: batch.draft() as i64,
                state_dtype: dtype_code(g.config.state_dtype),
                mode: 1,
            };
            self.run((dims.head_v_dim.div_ceil(ROWS_PER_BLOCK), dims.num_v_heads, batch.num_seqs()), &a)
        })
    }

    pub(crate) fn commit_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>, t: &PlanAddrs) -> Result<()> {
        let (ticket, layer, g) = (call.ticket(), call.layer(), *call.geometry());
        if t.commit_targets == 0 {
            // Every request skipped: nothing to copy, and no launch of an empty grid.
            return Ok(());
        }
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
                targets: t.tables[0],
                state_units: su as i64,
                conv_units: cu as i64,
                draft: g.draft() as i64,
            };
            let bt = self.launcher.block_threads(Kernel::Commit) as usize;
            self.run((su.max(cu).div_ceil(bt), t.commit_targets, 1), &a)
        })
    }
}
