//! The launches of speculative mode replay ([`SpecMode::Replay`](deltanet_core::SpecMode::Replay)):
//! verify runs the conv in its replay mode (each draft's window from the
//! slot's conv state and its path's inputs, the raw input recorded) and
//! `dnk_replay` (every draft's output, no state written, k, v, g, beta
//! recorded); commit shifts each committed request's conv state by its path's
//! recorded inputs and replays the path on its recurrent state in place (both
//! also into the snapshot slot when one is named). Tables come from a step
//! plan, as for every operation; nothing here allocates, uploads or waits.

use crate::args::{dtype_code, ConvArgs, ReplayArgs};
use crate::kernels::{Kernel, ROWS_PER_BLOCK};
use crate::launcher::Launcher;
use crate::step_plan::PlanAddrs;
use crate::CudaDispatcher;
use deltanet_core::{Checked, CommitBatch, ConvIo, DeltaIo, DeviceMemory, Error, PoolOf, Result, VerifyBatch};

/// `dnk_conv`'s replay modes (conv.cu).
const CONV_VERIFY: i64 = 3;
const CONV_COMMIT: i64 = 4;
/// `dnk_replay`'s modes (replay.cu).
const DELTA_VERIFY: i64 = 0;
const DELTA_COMMIT: i64 = 1;

impl<L: Launcher> CudaDispatcher<L> {
    pub(crate) fn conv_verify_replay_on(
        &self,
        pool: &mut PoolOf<Self>,
        call: Checked<'_, VerifyBatch, ConvIo<'_>>,
        t: &PlanAddrs,
    ) -> Result<()> {
        self.conv_verify_in_mode(pool, call, t, CONV_VERIFY)
    }

    pub(crate) fn verify_replay_on(
        &self,
        pool: &mut PoolOf<Self>,
        call: Checked<'_, VerifyBatch, DeltaIo<'_>>,
        t: &PlanAddrs,
    ) -> Result<()> {
        let (ticket, layer, batch, g, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = g.config.dims;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let records = parts.scratch.ok_or(Error::NoSpeculativeBuffers)?;
            let a = ReplayArgs {
                io: self.delta_args(&dims, io),
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                records: m.addr(records) + g.scratch_offset(layer, 0, 0) as u64,
                slots: t.tables[2],
                parents: t.tables[1],
                commits: 0,
                paths: 0,
                draft: batch.draft() as i64,
                state_dtype: dtype_code(g.config.state_dtype),
                mode: DELTA_VERIFY,
            };
            self.run((dims.head_v_dim.div_ceil(ROWS_PER_BLOCK), dims.num_v_heads, batch.num_seqs()), &a)
        })
    }

    pub(crate) fn commit_replay_on(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>, t: &PlanAddrs) -> Result<()> {
        let (ticket, layer, g) = (call.ticket(), call.layer(), *call.geometry());
        if t.commit_targets == 0 {
            // Every request skipped: nothing to replay, and no launch of an empty grid.
            return Ok(());
        }
        let dims = g.config.dims;
        let m = self.launcher.memory();
        pool.checked_parts(ticket, |parts| {
            let (records, inputs) = match (parts.scratch, parts.windows) {
                (Some(s), Some(w)) => (s, w),
                _ => return Err(Error::NoSpeculativeBuffers),
            };
            let conv = ConvArgs {
                state: m.addr(parts.conv) + g.conv_offset(layer, 0) as u64,
                windows: m.addr(inputs) + g.window_offset(layer, 0, 0) as u64,
                seqs: t.tables[0],
                parents: t.tables[1],
                channels: dims.conv_dim() as i64,
                width: dims.conv_width as i64,
                draft: g.draft() as i64,
                state_dtype: dtype_code(g.config.conv_dtype),
                mode: CONV_COMMIT,
                ..ConvArgs::default()
            };
            let bt = self.launcher.block_threads(Kernel::Conv) as usize;
            self.run((dims.conv_dim().div_ceil(bt), t.commit_targets, 1), &conv)?;
            let delta = ReplayArgs {
                io: self.delta_dims(&dims),
                state: m.addr(parts.temporal) + g.temporal_offset(layer, 0) as u64,
                records: m.addr(records) + g.scratch_offset(layer, 0, 0) as u64,
                slots: 0,
                parents: 0,
                commits: t.tables[0],
                paths: t.tables[1],
                draft: g.draft() as i64,
                state_dtype: dtype_code(g.config.state_dtype),
                mode: DELTA_COMMIT,
            };
            self.run((dims.head_v_dim.div_ceil(ROWS_PER_BLOCK), dims.num_v_heads, t.commit_targets), &delta)
        })
    }
}
