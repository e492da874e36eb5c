//! # deltanet-capi
//!
//! The C ABI of deltanet (`libdeltanet.so` / `libdeltanet.a`, header
//! `include/deltanet.h`): opaque handles over the runtime backend and pool,
//! DLPack `DLTensor` descriptors, one status enum mirroring the Rust error
//! kinds plus a thread-local message. No panic crosses the boundary, NULL or
//! dead handles are errors, and a call that fails changed no state.

pub mod api;
pub mod args;
pub mod batch;
pub mod dlpack;
pub mod handles;
pub mod ops;
pub mod slot;
pub mod status;
pub mod types;
