//! # deltanet-cli
//!
//! What the `deltanet` binary runs, kept out of the `deltanet` library so that
//! an engine depending on it pulls in no command-line, progress-bar, JSON or
//! random-number crates: the synthetic serving workload of `deltanet run`
//! ([`workload`], over the deterministic inputs of [`synth`] and the model
//! presets of [`models`]), the replay-file format of `deltanet replay`
//! ([`replay`]), the CPU benchmark routines of `deltanet bench` and the
//! criterion benches ([`bench`], feature `cpu`), the PNG charts of
//! `bench --plot` and `replay --plot` ([`plot`]), and `deltanet info` ([`info`]).
//!
//! Cargo features: `cpu` (default), `cuda`, `npu`, forwarded to the facade.

#![warn(missing_docs)]

#[cfg(feature = "cpu")]
pub mod bench;
pub mod info;
pub mod models;
pub mod plot;
pub mod replay;
pub mod synth;
pub mod workload;
