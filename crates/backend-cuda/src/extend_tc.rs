//! Which kernel runs extend, and the launches of the tensor-core one
//! (`dnk_extend_tc`, kernels/cuda/extend_tc.cu): the per-chunk products of
//! every chunk in parallel (phase 0), then the state recurrence (phase 1),
//! over the same tables as the portable `dnk_extend`.

use crate::args::{dtype_code, DeltaArgs, ExtendTcArgs};
use crate::kernels::{tc_chunk_floats, EXTEND_TC_ROWS};
use crate::launcher::Launcher;
use crate::CudaDispatcher;
use deltanet_core::{DType, DeltaIo, Result};

/// Which kernel runs extend ([`CudaDispatcher::with_extend_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtendPath {
    /// Tensor cores (bf16 operands) when q, k, v and the state are all bf16
    /// and the device has them (sm_80 and later, and the emulation); the
    /// portable kernel otherwise. An f32 state is held to f32 accuracy even
    /// with bf16 inputs (the conformance suite's contract: the inputs are
    /// exact, so only the kernel's arithmetic counts), which bf16 operands
    /// (W, U, V' and S rounded at every product, as fla does) cannot meet;
    /// tf32 operands cannot meet the f32 and f16 tolerances either.
    #[default]
    Auto,
    /// The portable SIMT kernel (`dnk_extend`), f32 arithmetic throughout.
    Portable,
    /// The tensor-core kernel for every input and state dtype: bf16 operands
    /// when q, k and v are all bf16, tf32 operands otherwise (about 1e-3
    /// relative error per product; the tests hold it to 5e-3 against the f64
    /// oracle, fla's level with bf16 inputs). `Unsupported` on a device
    /// without tensor cores.
    TensorCore,
}

/// Operand precision of `dnk_extend_tc` (`precision` in its arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcPrecision {
    /// bf16 operands, mma m16n8k16.
    Bf16 = 0,
    /// tf32 operands, mma m16n8k8.
    Tf32 = 1,
}

/// The extend tables of a step plan, on the device (shared with the portable kernel).
pub(crate) struct ExtendTables {
    /// 6 x i64 per sequence.
    pub seqs: u64,
    /// 4 x i64 per chunk.
    pub chunks: u64,
    /// Slot of each snapshot.
    pub snapshot_slots: u64,
    /// Chunks of each sequence, in order (host copy).
    pub chunks_per_seq: Vec<usize>,
}

/// The sequences one pair of launches takes: `seqs` sequences from `first_seq`,
/// whose chunks are `chunks` from `first_chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcGroup {
    pub first_seq: usize,
    pub seqs: usize,
    pub first_chunk: usize,
    pub chunks: usize,
}

/// Splits the sequences into consecutive groups whose workspace
/// (`chunk_bytes` per chunk) fits `budget` bytes; a sequence that alone
/// exceeds it forms its own group.
pub(crate) fn tc_groups(chunks_per_seq: &[usize], chunk_bytes: usize, budget: usize) -> Vec<TcGroup> {
    let mut out: Vec<TcGroup> = Vec::new();
    let mut first_chunk = 0;
    for (i, &c) in chunks_per_seq.iter().enumerate() {
        match out.last_mut() {
            Some(g) if (g.chunks + c) * chunk_bytes <= budget => {
                g.seqs += 1;
                g.chunks += c;
            }
            _ => out.push(TcGroup { first_seq: i, seqs: 1, first_chunk, chunks: c }),
        }
        first_chunk += c;
    }
    out
}

/// Workspace bytes of the largest group `tc_groups` makes for an extend of
/// sequences of `chunks_per_seq` chunks under `budget` bytes.
pub(crate) fn tc_workspace_bytes(chunks_per_seq: &[usize], k: usize, v: usize, hv: usize, budget: usize) -> usize {
    let chunk_bytes = tc_chunk_floats(k, v) * hv * 4;
    tc_groups(chunks_per_seq, chunk_bytes, budget).iter().map(|g| g.chunks * chunk_bytes).max().unwrap_or(0)
}

impl<L: Launcher> CudaDispatcher<L> {
    /// Whether the tensor-core kernel may run an extend of a pool with
    /// `state_dtype` (the inputs' dtypes are not known yet when a step plan
    /// is built): its workspace is then sized for either kernel.
    pub(crate) fn extend_may_use_tc(&self, state_dtype: DType) -> bool {
        match self.extend_path {
            ExtendPath::Portable => false,
            ExtendPath::Auto => state_dtype == DType::BF16 && self.launcher.tensor_cores(),
            ExtendPath::TensorCore => self.launcher.tensor_cores(),
        }
    }

    /// The tensor-core precision extend runs at, or `None` for the portable kernel.
    pub(crate) fn extend_precision(&self, io: &DeltaIo<'_>, state_dtype: DType) -> Result<Option<TcPrecision>> {
        let all_bf16 = [io.q.meta(), io.k.meta(), io.v.meta()].iter().all(|m| m.dtype() == DType::BF16);
        let precision = if all_bf16 { TcPrecision::Bf16 } else { TcPrecision::Tf32 };
        match self.extend_path {
            ExtendPath::Portable => Ok(None),
            ExtendPath::Auto => Ok((all_bf16 && state_dtype == DType::BF16 && self.launcher.tensor_cores()).then_some(precision)),
            ExtendPath::TensorCore if self.launcher.tensor_cores() => Ok(Some(precision)),
            ExtendPath::TensorCore => {
                Err(crate::unsupported(self.launcher.backend(), "the device has no mma.sync tensor cores (sm_80 and later)".into()))
            }
        }
    }

    /// Runs `dnk_extend_tc` over a step plan's tables, group by group (phase 0 then 1 for each).
    pub(crate) fn run_extend_tc(
        &self,
        io: DeltaArgs,
        t: &ExtendTables,
        workspace: u64,
        state: u64,
        state_dtype: DType,
        precision: TcPrecision,
    ) -> Result<()> {
        let (k, v, hv) = (io.dk as usize, io.dv as usize, io.hv as usize);
        let chunk_bytes = tc_chunk_floats(k, v) * hv * 4;
        for g in tc_groups(&t.chunks_per_seq, chunk_bytes, self.extend_workspace_budget) {
            let a = ExtendTcArgs {
                io,
                state,
                seqs: t.seqs + (g.first_seq * 6 * 8) as u64,
                chunks: t.chunks,
                snapshot_slots: t.snapshot_slots,
                workspace,
                seqs_count: g.seqs as i64,
                chunk_begin: g.first_chunk as i64,
                chunk_count: g.chunks as i64,
                state_dtype: dtype_code(state_dtype),
                phase: 0,
                precision: precision as i64,
            };
            self.run((hv, g.chunks.min(65535), 1), &a)?;
            self.run((hv, g.seqs.min(65535), v.div_ceil(EXTEND_TC_ROWS)), &ExtendTcArgs { phase: 1, ..a })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_fit_the_budget_and_cover_every_sequence_once() {
        let per = [3, 1, 4, 1, 5, 9, 2, 6];
        let g = tc_groups(&per, 10, 60);
        assert_eq!(g.iter().map(|g| g.seqs).sum::<usize>(), per.len());
        let mut next = (0, 0);
        for x in &g {
            assert_eq!((x.first_seq, x.first_chunk), next);
            assert_eq!(x.chunks, per[x.first_seq..x.first_seq + x.seqs].iter().sum::<usize>());
            assert!(x.chunks * 10 <= 60 || x.seqs == 1, "{x:?}");
            next = (x.first_seq + x.seqs, x.first_chunk + x.chunks);
        }
        // a sequence larger than the budget takes a group of its own
        assert_eq!(tc_groups(&[2, 100, 2], 1, 10).len(), 3);
    }
}
