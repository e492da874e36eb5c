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
//!   `--features regenerate-bindings` from `DELTANET_CANN_INCLUDE` or a CANN
//!   install under `ASCEND_TOOLKIT_HOME` / `ASCEND_HOME_PATH`; see "Bindings
//!   checked against CANN's headers" below), and the run-time loader that
//!   finds `libascendcl`, `libnnopbase` and `libopapi` (or its split
//!   libraries) by name and under the CANN roots. Nothing links against CANN:
//!   a build without it runs and reports the NPU unavailable.
//! - [`result`]: `aclError` / `aclnnStatus` → [`AclError`] (call name + code) →
//!   [`deltanet_core::Error::Device`]; a missing library → [`deltanet_core::Error::Unavailable`].
//! - [`safe`]: RAII device + stream ([`NpuContext`]), [`DeviceBuffer`],
//!   `aclTensor` / `aclScalar` / `aclIntArray` owners, and
//!   [`NpuContext::run`], the two-phase call with a per-stream workspace cache.
//! - [`api`]: the function table as a trait ([`AclApi`]) and the plain data it
//!   takes (handles, [`api::AclDType`], [`api::TensorDesc`]).
//! - [`ops`]: every aclnn operator call as data ([`ops::OpCall`]), its
//!   arguments in FFI order under the bindings' parameter names.
//! - [`cann`]: [`Cann`], the real function table (the loader, the runtime
//!   calls, and the operators' first phase marshalled from an `OpCall`).
//! - `testing` (cargo feature `testing`): the recording stand-in the tests
//!   run against, over host memory.
//! - [`dispatch`]: [`NpuDispatcher`], the [`deltanet_core::Kernels`] implementation
//!   with `Layout = VMajor` (the operators' `[HV, V, K]` state).
//!
//! ## What the operators allow (and the pool therefore refuses)
//! q/k/v/beta/out bf16 only; recurrent state bf16 on Atlas A2/A3, bf16 or f32
//! on Ascend 950 (the chunk operator takes f32 state only there); at most 8
//! draft tokens; HK, HV <= 64 and K, V <= 128 (chunk operator); conv width 2..=4
//! and conv_dim in 64..=16384 with `conv_dim * 2 % 32 == 0`; grouped head
//! mapping. These are the dispatcher's capabilities and their limits
//! ([`deltanet_core::DimLimits`]): `new_pool` checks all of it before allocating,
//! and every operation checks its pool again, so an f32 pool never reaches a
//! bf16-only operator. The CausalConv1d operators are documented for Ascend
//! 950 only: on A2/A3 the conv entry points return `Error::Unsupported`.
//!
//! ## What an error leaves in the pool
//! An input error (tensors, batch, layer, the operator limits above, a step
//! plan built for another batch) is found before anything is issued, and
//! leaves the pool unchanged.
//!
//! **When a device error surfaces.** Operations only queue work on the
//! stream and never wait for it, so an error of a queued operator or copy
//! is not reported by the operation that queued it (only a refused first
//! phase, `aclnnXxxGetWorkspaceSize`, or a refused enqueue is). It surfaces,
//! as [`deltanet_core::Error::Device`], at the next call that waits for the
//! stream: a pool export, import, read or write ([`NpuMemory`] drains the
//! stream first), a step plan rebuilt while its previous upload is still
//! queued (its event wait), or the engine's own synchronisation of its
//! stream (torch_npu reports it there).
//!
//! **What the pool guarantees then.** Its bookkeeping (which slots are
//! allocated, their generations, which hold a current verify) is the host's
//! view of every call it accepted and stays consistent; the pool stays
//! usable. The states written by the work queued since the last successful
//! wait are unspecified — every slot a batch of those calls named — and the
//! engine drops them (frees or re-prefills those requests) or re-imports
//! them, as after any device fault. Within one operation, work runs in
//! stream order, so the copies queued behind a failing operator may already
//! have moved its unfinished output:
//! - extend (`conv_extend`, `extend`): the slots and snapshot slots of the
//!   batch may hold partly written states. `conv_extend` writes the snapshot
//!   windows, then every slot's conv state in one operator call. `extend` runs
//!   one chunk-operator call per group of sequences, in batch order (a
//!   sequence with snapshots is one call per piece between them), each
//!   followed by the copies into its slots: the sequences of the calls before
//!   the failing one hold their new state (a sequence cut at snapshots may
//!   stand at one of its snapshot positions), the failing call's slots and
//!   snapshot slots are unspecified, the later ones unchanged.
//! - decode (`conv_update`, `decode`): in place; every slot of the batch is unspecified.
//! - verify (`conv_verify`, `verify`): only the scratch and draft windows are
//!   written, so every slot's main recurrent and conv state stays unchanged
//!   even then; the scratch and windows of the batch's slots are unspecified
//!   (a commit of them would commit garbage).
//! - commit: copies slot by slot, recurrent then conv state; each slot (and
//!   snapshot slot) of the batch holds its old state, its committed one, or
//!   the committed recurrent state with the old conv state.
//! - the layer forward (`forward_*`) runs conv, gate and delta rule in turn:
//!   a device error in the delta rule leaves the conv states already advanced.
//!
//! ## Inside an engine's step: its stream, one plan per step, no host sync
//! **Stream.** [`NpuDispatcher::new`] issues everything on a stream of its
//! own; [`NpuDispatcher::on_stream`] (or `with_api_on_stream` for a
//! stand-in) issues every operator and copy on the engine's `aclrtStream`
//! (torch_npu: `torch.npu.current_stream().npu_stream`), which the engine
//! keeps alive and the dispatcher never destroys. No operation waits for the
//! device (see above for when a device error surfaces).
//!
//! **Step plans.** A forward step's batch (extend, decode, verify, commit)
//! is the same for every layer, so the int32 index tables its operators read
//! (cache lines, sequence lengths, state indices) are built once on the host
//! into a [`StepPlan`] and uploaded once — one `aclrtMemcpyAsync` from
//! page-locked memory (`aclrtMallocHost`) into a device buffer the plan
//! owns. Every layer then runs on [`NpuDispatcher::planned`], which
//! implements the same [`deltanet_core::Kernels`], so the layer forward and
//! every `KernelDispatcher` method take it; a call whose batch is not the
//! plan's is refused with `Error::InvalidConfig` before anything is queued.
//! A plan is rebuilt in place each step: after the first step nothing is
//! allocated. The batch-only entry points still work: each builds a one-use
//! plan (one upload per operation instead of per step).
//!
//! ```no_run
//! # use deltanet_backend_npu::{NpuDispatcher, NpuMemory, StepPlan};
//! # use deltanet_core::*;
//! # fn engine_stream() -> deltanet_backend_npu::api::StreamHandle { unimplemented!() }
//! # fn layer_forward(d: &impl KernelDispatcher<Memory = NpuMemory, Layout = VMajor>,
//! #     pool: &mut StatePool<NpuMemory, VMajor>, layer: usize, b: &DecodeBatch) -> Result<()> { Ok(()) }
//! # fn main() -> Result<()> {
//! let d = NpuDispatcher::on_stream(0, engine_stream())?; // the engine's aclrtStream
//! let dims = ModelDims::new(16, 32, 128, 128, 4)?;
//! let cfg = PoolConfig::new(30, 256, dims).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16);
//! let mut pool = d.new_pool(cfg)?;
//! let slots = pool.alloc(8)?;
//! let mut plan = StepPlan::new(); // one per engine, reused every step
//! for _step in 0..3 {
//!     let batch = DecodeBatch::new(&pool, &slots)?;
//!     d.plan_decode(&mut plan, &pool, &batch)?; // the step's one upload
//!     for layer in 0..30 {
//!         // forward_decode(&d.planned(&plan), &mut pool, layer, &batch, &weights, &input, params, &mut ws, out)
//!         layer_forward(&d.planned(&plan), &mut pool, layer, &batch)?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! **Steady state.** Run one step first (it sizes the layer workspace, the
//! plan, the operator workspace and the stream's scratch). After it, a
//! planned step allocates no device or host memory, uploads once, never
//! waits for the device, and every layer issues the same operator calls:
//! temporaries come from the stream's scratch ([`NpuContext::scratch`],
//! allocations released by earlier operations, reused by work queued after
//! them), the operators' symbols are resolved once per process, and the L2
//! norm's constant is uploaded once per head size. A plan's page-locked
//! staging is rewritten only after the upload from it has run: a build asks
//! (never waits for) the event recorded after each upload and writes into a
//! staging buffer whose upload has run, or into another while up to four
//! uploads are still queued, so neither a plan rebuilt each step nor the
//! batch-only path's one-use plan, rebuilt by every operation, waits.
//!
//! | per layer of a planned step, after warm-up | decode | extend |
//! |---|---|---|
//! | operator calls | 14: conv 3 (casts of its weight and bias, the conv), gate 7, q/k L2 norm 2, cast of beta 1, delta rule 1 (27 before: the L2 norm took 14, the gate 8) | the same, with one chunk-operator call per group of sequences |
//! | device and host allocations, uploads, host waits | 0 (the step's one upload is the plan's) | 0 |
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
//! tests (`tests/stand_in/`) against the recording function table of the
//! `testing` feature, including the counting tests of planned 30-layer
//! extend and decode steps (`tests/stand_in/step_plan.rs`).
//!
//! ## Bindings checked against CANN's headers
//! `crates/backend-npu/check-bindings.sh` (a CI step) proves the runtime half
//! of the bindings against CANN's own headers: it downloads (never installs)
//! the torch-npu 2.14.0 wheel (sha256-pinned), unpacks the CANN runtime
//! headers it vendors (`torch_npu/include/third_party/acl/inc/`: acl/acl.h,
//! acl_rt.h, acl_base_rt.h, error_codes/) and op-plugin's
//! `op_api_common_base.h` (the `aclCreateTensor`/`aclCreateScalar`/
//! `aclCreateIntArray`/`aclDestroy*` function types and `OpApiFunc`, the
//! operators' second phase) into a temporary folder, runs bindgen with this
//! crate's own configuration (`build/regenerate.rs`: C++ mode, the same
//! allow-lists) and compares every checked-in item structurally
//! (`bindings-check/`, a separate small workspace so CI's other steps never
//! build bindgen): names, parameter names and types, pointer constness,
//! return types, enum and error-code values. Any difference fails CI; with
//! `CI` unset a missing prerequisite (libclang, network) skips the check, and
//! a plain `cargo test` never needs it.
//!
//! **Proven against:** the CANN runtime headers vendored by torch_npu 2.14.0,
//! whose install guide pairs it with CANN 9.1.0: 71 items (devices, streams,
//! memory, page-locked host memory (`aclrtMallocHost`/`aclrtFreeHost`) and
//! events (`aclrtEvent`, `aclrtCreateEvent`, `aclrtRecordEvent`,
//! `aclrtQueryEventStatus` with `aclrtEventRecordedStatus`,
//! `aclrtSynchronizeEvent`, `aclrtDestroyEvent`) for step plans,
//! `aclDataType`, `aclFormat`, `aclrtMemcpyKind`,
//! `aclrtMemMallocPolicy`, `ACL_SUCCESS`, `ACL_ERROR_REPEAT_INITIALIZE` =
//! 100002, `ACL_ERROR_BAD_ALLOC` = 200000 and `ACL_ERROR_RT_MEMORY_ALLOCATION`
//! = 207001, which map to `Error::OutOfMemory`, the descriptor functions, the
//! opaque handle types). The first run found and fixed: `aclrtMemcpyKind` and
//! `aclrtMemMallocPolicy` are unsigned enums (`c_uint`), not `c_int`.
//!
//! The aclnn operator declarations and status codes ship in no package, so no
//! machine checks them: each is marked "not in the runtime headers" in
//! `bindings.rs` with the public header and CANN version it was read from
//! (ops-transformer 9.0.0, for CANN >= 8.5.0, for the GDN and conv operators;
//! the CANN 8.x API reference for the elementwise ones and `aclnnRmsNorm`). Reading them found
//! and fixed `aclnnChunkGatedDeltaRule`'s `out` and `finalState`, which are
//! non-const `aclTensor *`. [`ops::OpCall::args`] lists every operator's
//! arguments in FFI order under the bindings' parameter names; [`Cann`]
//! passes `args()[i]` as parameter `i`, and the recording stand-in checks
//! each call's list against the parameter list it reads from `bindings.rs`
//! itself (names, order, kinds, which tensors are written), so the stand-in,
//! the contract tests and the FFI cannot drift apart.
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
//! taken as authoritative). The elementwise and norm signatures (`aclnnAdd`,
//! `aclnnMul`, `aclnnSoftplus`, `aclnnCast`, `aclnnRmsNorm`), `aclCreateTensor`,
//! `aclrtMemsetAsync` and `ACL_BF16 = 27` / `ACL_FORMAT_ND = 2` match the CANN
//! headers (the runtime ones now by machine, see above). Not confirmed: describing
//! a view's storage to `aclCreateTensor` as one dimension spanning the view;
//! `aclnnAdd` promoting a bf16 `self` against an f32 `other` into an f32 `out`
//! (the documented type-promotion rule, unexercised); `aclnnRmsNorm` reading
//! a strided (non-contiguous) `x`;
//! `blockSizeToAlign = 0` disabling block-aligned caching; the names of the split
//! operator libraries (`libopapi_transformer.so`...); the `Ascend950` SoC name
//! prefix.
//! The on-device tests (`tests/on_device.rs`) are what settles them.

#![warn(missing_docs)]

pub mod api;
pub mod cann;
mod conv;
pub mod dispatch;
mod elementwise;
mod gdn;
pub mod memory;
mod norm_gamma;
pub mod ops;
mod planned;
pub mod result;
pub mod safe;
pub mod soc;
mod step_plan;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;
mod view;

pub use api::{AclApi, Cann};
pub use dispatch::NpuDispatcher;
pub use memory::NpuMemory;
pub use planned::Planned;
pub use result::AclError;
pub use safe::{DeviceBuffer, NpuContext};
pub use soc::SocFamily;
pub use step_plan::StepPlan;

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
