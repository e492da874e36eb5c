//! `deltanet._native`: the PyO3 extension behind the `deltanet` Python package.
//!
//! * [`tensor`]: borrowing caller tensors zero-copy (DLPack, array interface);
//! * [`errors`]: the exception hierarchy and the panic guard;
//! * [`slots`]: the one conversion pair between slots and Python ints;
//! * [`functional`]: the fla / causal-conv1d functions' native halves;
//! * [`staging`]: per-slot states between caller tensors and a pool;
//! * [`states`]: the pools the fla-style functions hand out as final states;
//! * [`pool`]: `Backend` and `Pool`, the serving-engine API;
//! * [`oracle`]: the f64 reference, for tests;
//! * [`threads`]: the kernels' worker threads (the importing thread is one).

mod errors;
mod functional;
mod omp_team;
mod oracle;
mod pool;
mod slots;
mod staging;
mod states;
mod tensor;
mod threads;

use pyo3::prelude::*;

/// The package version.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Every backend name this build knows (compiled in or not).
#[pyfunction]
fn backend_names() -> Vec<&'static str> {
    deltanet::backend::BACKEND_NAMES.to_vec()
}

/// Worker threads the CPU kernels run on (the importing thread included when there are two or more).
#[pyfunction]
fn kernel_threads() -> usize {
    rayon::current_num_threads()
}

/// Whether the fla-compatible functions' CPU calls (prefill, decode, conv) run on the OpenMP
/// team of a runtime loaded in this process (torch's) rather than on the calling thread and
/// rayon's pool.
#[pyfunction(name = "omp_team")]
fn uses_omp_team() -> bool {
    omp_team::OmpTeam::loaded().is_some()
}

/// Test hook: panics inside the boundary guard, which must raise `InternalError`.
#[pyfunction]
fn _panic_for_test() -> PyResult<()> {
    errors::guard(|| -> PyResult<()> { panic!("deliberate test panic") })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    threads::init_with_current_thread();
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(kernel_threads, m)?)?;
    m.add_function(wrap_pyfunction!(uses_omp_team, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(backend_names, m)?)?;
    m.add_function(wrap_pyfunction!(functional::gated_delta_rule, m)?)?;
    m.add_function(wrap_pyfunction!(functional::causal_conv1d, m)?)?;
    m.add_function(wrap_pyfunction!(functional::causal_conv1d_update, m)?)?;
    m.add_function(wrap_pyfunction!(oracle::oracle_gated_delta_rule, m)?)?;
    m.add_function(wrap_pyfunction!(oracle::oracle_gate, m)?)?;
    m.add_function(wrap_pyfunction!(oracle::oracle_causal_conv1d, m)?)?;
    m.add_function(wrap_pyfunction!(tensor::tensor_info, m)?)?;
    m.add_class::<states::StateView>()?;
    pool::register(m)?;
    m.add("CUDA_STREAM_MESSAGE", tensor::CUDA_STREAM_MSG)?;
    Ok(())
}
