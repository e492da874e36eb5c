//! A stand-in for ACL/aclnn, behind the `testing` cargo feature, so the
//! marshalling layer can be tested on any machine: [`Recorder`] implements
//! [`AclApi`](crate::api::AclApi) over host memory, records every descriptor
//! and operator call with its full tensor contract, and checks each call's
//! argument list against the FFI parameter list in `src/sys/bindings.rs`
//! ([`check_args`]). Made with [`Recorder::evaluating`], it also evaluates
//! each operator on that memory per its documented semantics, so the layer
//! forward runs end to end and can be compared with the f64 oracle.
//!
//! It is public (rather than `cfg(test)`) because the tests live in
//! `tests/`, outside the crate; it is a feature so a normal build carries
//! none of it. The crate's own tests enable it through a dev-dependency on
//! the crate itself.

mod evaluate;
mod recorder;

pub use recorder::{check_args, ffi_params, Counts, Event, Recorded, Recorder};
