//! # deltanet
//!
//! Gated DeltaNet layers (the linear-attention layers of Qwen3-Next, Qwen3.5
//! and Qwen3.6) for serving engines, on CPU, NVIDIA GPUs and Ascend NPUs, with
//! one state pool and one forward path.
//!
//! This facade re-exports [`deltanet_core`] and adds the runtime [`Backend`]
//! (every variant present in every build; a backend compiled out is
//! [`Error::NotCompiled`]). It depends on nothing an engine does not link:
//! the `deltanet` binary (its workload, replay files, benchmarks) is the
//! `deltanet-cli` package in crates/cli, and the conformance suite is the
//! `deltanet-conformance` dev-dependency.
//!
//! Cargo features: `cpu` (default), `cuda`, `npu`.

#![warn(missing_docs)]

pub mod backend;

pub use backend::{Backend, BackendVisitor, Pool};
#[cfg(feature = "cpu")]
pub use deltanet_backend_cpu as cpu;
#[cfg(feature = "cuda")]
pub use deltanet_backend_cuda as cuda;
#[cfg(feature = "npu")]
pub use deltanet_backend_npu as npu;
pub use deltanet_core::*;

/// The README's Rust snippets, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
