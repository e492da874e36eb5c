//! Marshalling tests against the recording function table (the `testing`
//! feature; no NPU needed): every operator call's tensors (dims, strides,
//! dtypes, ND format, addresses) against the operators' documented
//! contracts, the index tables, the copies; and the layer forward end to
//! end against the f64 oracle, with the stand-in evaluating the operators.

mod bindings_contract;
mod commit;
mod common;
mod conformance;
mod conv;
mod delta;
mod forward;
mod gate;
mod loading;
mod memory;
mod steady_state;
mod step_plan;
