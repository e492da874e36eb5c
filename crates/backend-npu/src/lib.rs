//! # deltanet-backend-npu
//!
//! Gated DeltaNet on Huawei Ascend NPUs through CANN: the ACL runtime for
//! devices, streams and memory, and the aclnn GDN operators
//! (`aclnnChunkGatedDeltaRule`, `aclnnRecurrentGatedDeltaRule`,
//! `aclnnCausalConv1dFn`, `aclnnCausalConv1dUpdate`) for the kernels.
//!
//! ## Layers (cudarc's split)
//! - [`sys`]: bindings checked in as `src/sys/bindings.rs` (bindgen's
//!   dynamic-loading shape; `build.rs` regenerates them with
//!   `--features regenerate-bindings` when the CANN headers are found under
//!   `ASCEND_TOOLKIT_HOME` / `ASCEND_HOME_PATH`), and the run-time loader that
//!   finds `libascendcl`, `libnnopbase` and `libopapi` (or its split
//!   libraries) by name and under the CANN roots. Nothing links against CANN:
//!   a build without it runs and reports the NPU unavailable.
//! - [`result`]: `aclError` / `aclnnStatus` → [`AclError`] (call name + code) →
//!   [`deltanet_core::Error::Device`]; a missing library → [`deltanet_core::Error::Unavailable`].
//! - [`safe`]: RAII device + stream ([`NpuContext`]), [`DeviceBuffer`],
//!   `aclTensor` / `aclScalar` / `aclIntArray` owners, and
//!   [`NpuContext::run`], the two-phase call with a per-stream workspace cache.
//! - [`api`]: the function table as a trait ([`AclApi`]); [`Cann`] is the real
//!   one, the tests use a recording stand-in.
//! - [`dispatch`]: [`NpuDispatcher`], the [`deltanet_core::KernelDispatcher`]
//!   with `Layout = VMajor` (the operators' `[HV, V, K]` state).
//!
//! ## What the operators allow (and the pool therefore refuses)
//! q/k/v/beta/out bf16 only; recurrent state bf16 on Atlas A2/A3, bf16 or f32
//! on Ascend 950 (the chunk operator takes f32 state only there); at most 8
//! draft tokens; HK, HV <= 64 and K, V <= 128 (chunk operator); conv width 2..=4
//! and conv_dim in 64..=16384 with `conv_dim * 2 % 32 == 0`; grouped head
//! mapping. [`NpuDispatcher::new_pool`](deltanet_core::KernelDispatcher::new_pool)
//! checks all of it before allocating, so an f32 pool never reaches a
//! bf16-only operator. The CausalConv1d operators are documented for Ascend
//! 950 only: on A2/A3 the conv entry points return `Error::Unsupported`.
//!
//! ## Running the conformance suite on a real NPU
//! On a machine with CANN (8.3 or newer, with the ops-transformer operators
//! installed) and an Ascend device:
//! ```text
//! source /usr/local/Ascend/ascend-toolkit/set_env.sh     # sets ASCEND_TOOLKIT_HOME, LD_LIBRARY_PATH
//! cargo run --features npu -- info                       # probe(): libraries found, device count
//! cargo test --features npu                              # the facade's conformance tests, NPU included
//! cargo test -p deltanet-backend-npu -- --ignored        # on-device smoke tests of this crate
//! ```
//! Without CANN, `cargo test -p deltanet-backend-npu` runs the marshalling
//! tests against the recording function table.
//!
//! ## Confirmed and unconfirmed details
//! Written without CANN headers or a device, from the operator docs
//! (hicann/ops-transformer `docs/aclnn*.md`). Confirmed there: every signature
//! of the four GDN/conv operators, their dtypes, shapes and limits; and, from
//! the recurrent operator's golden reference (`recurrent_gated_delta_rule_golden.py`),
//! that a sequence starts from `state[ssmStateIndices[start + numAcceptedTokens - 1]]`,
//! writes token t's state to `state[ssmStateIndices[start + t]]`, and maps value
//! head h to key head `h / (HV/HK)`. The CausalConv1d weight `[K, dim]` is the
//! transpose of the usual `[dim, K]`: the kernel (`op_kernel/arch35/causal_conv1d.h`)
//! accumulates `ring[(t + j) % (K + 1)] * weight[j]` over a ring filled oldest
//! first (the docs' formula `sum_j w_j x_{t-j}` reads reversed; the kernel is
//! taken as authoritative). The elementwise signatures (`aclnnAdd`, `aclnnAdds`,
//! `aclnnMul`, `aclnnSoftplus`, `aclnnReduceSum`, `aclnnCast`), `aclCreateTensor`,
//! `aclrtMemsetAsync` and `ACL_BF16 = 27` / `ACL_FORMAT_ND = 2` match the CANN
//! headers and API pages found with the search tool. Not confirmed: describing
//! a view's storage to `aclCreateTensor` as one dimension spanning the view;
//! `blockSizeToAlign = 0` disabling block-aligned caching; the names of the split
//! operator libraries (`libopapi_transformer.so`...); the `Ascend950` SoC name
//! prefix; `100002` as "ACL already initialised".
//! The on-device tests (`tests/on_device.rs`) are what settles them.

#![warn(missing_docs)]

pub mod api;
pub mod dispatch;
pub mod memory;
pub mod result;
pub mod safe;
pub mod sys;

#[cfg(test)]
mod recording;
#[cfg(test)]
mod tests;

pub use api::{AclApi, Cann};
pub use dispatch::{NpuDispatcher, SocFamily};
pub use memory::NpuMemory;
pub use result::AclError;
pub use safe::{DeviceBuffer, NpuContext};

/// Cheap check for `deltanet info`: loads the CANN libraries and counts
/// devices, without opening one. `Err` says what is missing.
pub fn probe() -> Result<(), String> {
    let cann = Cann::load().map_err(|e| e.to_string())?;
    cann.init().map_err(|e| e.to_string())?;
    match cann.device_count() {
        Ok(0) => Err("CANN loaded but no Ascend device is visible".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
