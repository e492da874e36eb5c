//! Speculative modes ([`SpecMode`]), fixed when a pool is made, and the one
//! place that picks the kernels of a mode: [`KernelDispatcher`]'s
//! `conv_verify`, `verify` and `commit` and the layer forward's verify call
//! these, so neither the forward path nor an engine asks which mode a pool is in.
//!
//! - [`SpecMode::Scratch`] (what engines do today): verify writes every draft
//!   step's state and conv window into the pool's scratch; commit copies the
//!   accepted step back.
//! - [`SpecMode::Replay`] (sglang's and FlashInfer's "ReplaySSM"): verify
//!   computes every draft's output from the slot's state without writing any
//!   state, and records per draft only what commit needs: its raw conv input
//!   (the pool's `windows` buffer, `[L, slots+1, D, conv_dim]` in the conv
//!   dtype) and the k, v, g, beta the delta rule used (the `scratch` buffer,
//!   `[L, slots+1, D, HV, K + V + 2]` f32, per value head: k, v, g, beta).
//!   Commit replays the accepted path (root → a) on the slot's state in place,
//!   with the decode's arithmetic, and shifts the path's inputs into the conv
//!   window.

use crate::batch::{CommitBatch, VerifyBatch};
use crate::checked::Checked;
use crate::dispatch::{Kernels, PoolOf};
use crate::error::{Error, Result};
use crate::kernel_io::{ConvIo, DeltaIo};
use crate::pool::MambaStatePool;

/// How a pool holds speculative drafts between verify and commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpecMode {
    /// D per-step states and conv windows per request; commit copies one back.
    #[default]
    Scratch,
    /// The drafts' inputs per request; commit replays the accepted path.
    Replay,
}

impl SpecMode {
    /// Both modes.
    pub const ALL: [SpecMode; 2] = [SpecMode::Scratch, SpecMode::Replay];

    /// `"scratch"` or `"replay"`.
    pub fn name(self) -> &'static str {
        match self {
            SpecMode::Scratch => "scratch",
            SpecMode::Replay => "replay",
        }
    }
}

impl std::fmt::Display for SpecMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SpecMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SpecMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::InvalidConfig(format!("speculative mode {s:?} (scratch or replay)")))
    }
}

/// The error of a [`Kernels`] replay method a backend does not implement
/// (unreachable through a pool: a backend whose capabilities do not list
/// [`SpecMode::Replay`] cannot make a replay pool).
pub fn replay_unsupported(backend: &str) -> Error {
    Error::Unsupported { backend: backend.into(), reason: "speculative mode replay (this backend supports scratch only)".into() }
}

fn mode_of<K: Kernels + ?Sized>(pool: &PoolOf<K>) -> SpecMode {
    pool.geometry().config.spec.map_or(SpecMode::Scratch, |s| s.mode)
}

/// The conv of a verify in the pool's mode.
pub(crate) fn conv_verify<K: Kernels + ?Sized>(k: &K, pool: &mut PoolOf<K>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
    match mode_of::<K>(pool) {
        SpecMode::Scratch => k.run_conv_verify(pool, call),
        SpecMode::Replay => k.run_conv_verify_replay(pool, call),
    }
}

/// The delta rule of a verify in the pool's mode.
pub(crate) fn verify<K: Kernels + ?Sized>(k: &K, pool: &mut PoolOf<K>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
    match mode_of::<K>(pool) {
        SpecMode::Scratch => k.run_verify(pool, call),
        SpecMode::Replay => k.run_verify_replay(pool, call),
    }
}

/// A commit in the pool's mode.
pub(crate) fn commit<K: Kernels + ?Sized>(k: &K, pool: &mut PoolOf<K>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
    match mode_of::<K>(pool) {
        SpecMode::Scratch => k.run_commit(pool, call),
        SpecMode::Replay => k.run_commit_replay(pool, call),
    }
}
