//! Speculative decoding in both pool modes (issue 14's targets): a verify of
//! D chain drafts followed by the commit of a random accepted step, in
//! [`SpecMode::Scratch`] and [`SpecMode::Replay`], against D decode steps,
//! all three timed in the same rounds; and each mode's speculative memory per
//! request.

use super::{cycle_bytes, interleaved, DecodeBench, Lcg};
use deltanet_core::*;
use std::time::Duration;

/// Verify + commit per mode against D decodes, one layer, f32 state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecResult {
    /// Requests.
    pub batch: usize,
    /// Drafts D.
    pub draft: usize,
    /// Seconds of a scratch-mode verify + commit.
    pub scratch_secs: f64,
    /// Seconds of a replay-mode verify + commit.
    pub replay_secs: f64,
    /// Seconds of D decode steps.
    pub decode_secs: f64,
    /// Speculative-buffer bytes per request and layer in scratch mode.
    pub scratch_bytes: usize,
    /// The same in replay mode.
    pub replay_bytes: usize,
}

impl SpecResult {
    /// Replay verify + commit over D decodes (target <= 0.5).
    pub fn replay_ratio(&self) -> f64 {
        self.replay_secs / self.decode_secs
    }
    /// Scratch verify + commit over D decodes.
    pub fn scratch_ratio(&self) -> f64 {
        self.scratch_secs / self.decode_secs
    }
    /// Replay's speculative memory over scratch's (target <= 1/20).
    pub fn memory_ratio(&self) -> f64 {
        self.replay_bytes as f64 / self.scratch_bytes as f64
    }

    /// The report's table rows.
    pub(crate) fn rows(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (d, b) = (self.draft, self.batch);
        writeln!(
            f,
            "| replay verify D={d} + commit, batch {b} | {:.3} ms vs {:.3} ms for {d} decodes (scratch mode: {:.3} ms, {:.2}x) | {:.2}x | <= 0.5x |",
            self.replay_secs * 1e3,
            self.decode_secs * 1e3,
            self.scratch_secs * 1e3,
            self.scratch_ratio(),
            self.replay_ratio()
        )?;
        writeln!(
            f,
            "| speculative memory per request per layer, D={d} | replay {:.1} KiB vs scratch {:.1} KiB | 1/{:.1} | <= 1/20 |",
            self.replay_bytes as f64 / 1024.0,
            self.scratch_bytes as f64 / 1024.0,
            1.0 / self.memory_ratio()
        )
    }
}

impl DecodeBench {
    /// A verify of D chain drafts on the next layer, then the commit of a
    /// random accepted step per request (drawn from `rng`).
    fn verify_commit_step(&mut self, rng: &mut Lcg) {
        let batch = VerifyBatch::chain(&self.pool, &self.slots).expect("batch");
        let n = self.slots.len() * self.draft;
        let io = self.x.io(&self.dims, 0, n);
        self.d.verify(&mut self.pool, self.next, &batch, io).expect("verify");
        let accepted: Vec<Option<usize>> =
            self.slots.iter().map(|_| Some((rng.next() * self.draft as f32) as usize % self.draft)).collect();
        let commit = CommitBatch::new(&self.pool, &self.slots, &accepted, &[]).expect("batch");
        self.d.commit(&mut self.pool, self.next, &commit).expect("commit");
        self.next = (self.next + 1) % self.layers;
    }
}

/// Times verify (D chain drafts) + commit of a random accepted step in both
/// modes and D decode steps, interleaved (f32 state, one layer each).
pub fn bench_spec(dims: ModelDims, batch: usize, draft: usize, threads: usize) -> Result<SpecResult> {
    let bench = |mode| DecodeBench::speculative(dims, batch, DType::F32, (draft, mode), threads, cycle_bytes());
    let (mut scratch, mut replay) = (bench(SpecMode::Scratch)?, bench(SpecMode::Replay)?);
    let (ls, lr) = (scratch.layers(), replay.layers());
    let (mut r1, mut r2) = (Lcg(17), Lcg(17));
    let s = interleaved(3, 3, Duration::from_millis(1000), |i| match i {
        0 => (0..ls).for_each(|_| scratch.verify_commit_step(&mut r1)),
        1 => (0..lr).for_each(|_| replay.verify_commit_step(&mut r2)),
        _ => (0..lr * draft).for_each(|_| replay.decode_step()),
    });
    let per_request = |b: &DecodeBench| b.pool.geometry().config.spec_bytes_per_slot() / b.layers;
    Ok(SpecResult {
        batch,
        draft,
        scratch_secs: s[0] / ls as f64,
        replay_secs: s[1] / lr as f64,
        decode_secs: s[2] / lr as f64,
        scratch_bytes: per_request(&scratch),
        replay_bytes: per_request(&replay),
    })
}
