//! The exception hierarchy: one Python class per kind of [`deltanet::Error`],
//! all under `deltanet.Error`, each also a subclass of the matching builtin
//! (`ValueError`, `TypeError`, ...) so code catching those keeps working.
//! Panics are caught here and raised as `InternalError`: none crosses into Python.

use deltanet::Error;
use pyo3::exceptions::{PyException, PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple, PyType};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Every exception class: (name, Python base classes by name, docstring).
/// `Error` comes first; a base named here must precede its subclasses.
const CLASSES: &[(&str, &[&str], &str)] = &[
    ("Error", &["Exception"], "Base of every deltanet error."),
    ("LayoutError", &["Error", "ValueError"], "Layout mismatch, or strides a kernel cannot honour."),
    ("ShapeError", &["Error", "ValueError"], "Wrong shape, list length, cu_seqlens, layer index or state dims."),
    ("DTypeError", &["Error", "TypeError"], "A dtype the tensor or backend cannot take."),
    ("SlotError", &["Error", "ValueError"], "Padding, out-of-range, unallocated, duplicate or foreign slot; double free."),
    (
        "SpeculativeError",
        &["Error", "ValueError"],
        "Verify/commit misuse: no spec buffers, draft count, accepted step, parents, snapshots.",
    ),
    ("ConfigError", &["Error", "ValueError"], "Invalid or unsupported configuration."),
    ("UnsupportedArgumentError", &["ConfigError"], "An fla/causal-conv1d argument deltanet does not implement."),
    ("OutOfMemoryError", &["Error", "MemoryError"], "No free slots (or memory) left."),
    ("DeviceError", &["Error", "RuntimeError"], "Tensor on the wrong device, or a device runtime failure."),
    ("UnavailableError", &["Error", "RuntimeError"], "Backend not compiled in or not usable here."),
    ("InternalError", &["Error", "RuntimeError"], "A deltanet bug (a Rust panic caught at the boundary)."),
];

static TYPES: GILOnceCell<Vec<Py<PyType>>> = GILOnceCell::new();

fn builtin<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyType>> {
    let t = match name {
        "Exception" => py.get_type::<PyException>(),
        "ValueError" => py.get_type::<PyValueError>(),
        "TypeError" => py.get_type::<PyTypeError>(),
        "MemoryError" => py.get_type::<PyMemoryError>(),
        "RuntimeError" => py.get_type::<PyRuntimeError>(),
        _ => return None,
    };
    Some(t)
}

fn build(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    let type_fn = py.import("builtins")?.getattr("type")?;
    let mut made: Vec<Py<PyType>> = Vec::new();
    for (name, bases, doc) in CLASSES {
        let mut base_objs: Vec<Bound<'_, PyType>> = Vec::new();
        for b in *bases {
            match builtin(py, b) {
                Some(t) => base_objs.push(t),
                None => {
                    let i = CLASSES.iter().position(|c| c.0 == *b).expect("base declared before use");
                    base_objs.push(made[i].bind(py).clone());
                }
            }
        }
        let ns = PyDict::new(py);
        ns.set_item("__doc__", *doc)?;
        ns.set_item("__module__", "deltanet")?;
        let cls = type_fn.call1((*name, PyTuple::new(py, base_objs)?, ns))?;
        made.push(cls.downcast_into::<PyType>()?.unbind());
    }
    Ok(made)
}

/// The class called `name` (one of [`CLASSES`]).
pub fn class<'py>(py: Python<'py>, name: &str) -> Bound<'py, PyType> {
    let types = TYPES.get_or_try_init(py, || build(py)).expect("building the exception classes cannot fail");
    let i = CLASSES.iter().position(|c| c.0 == name).expect("known exception class");
    types[i].bind(py).clone()
}

/// Adds every class to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for (name, _, _) in CLASSES {
        m.add(*name, class(m.py(), name))?;
    }
    Ok(())
}

/// A Python exception of class `name` carrying `msg`.
pub fn raise(name: &'static str, msg: impl Into<String>) -> PyErr {
    let msg: String = msg.into();
    Python::with_gil(|py| PyErr::from_type(class(py, name), msg))
}

/// The class a Rust error kind maps to.
pub fn class_name(e: &Error) -> &'static str {
    match e {
        Error::LayoutMismatch { .. } | Error::BadStrides { .. } => "LayoutError",
        Error::ShapeMismatch { .. }
        | Error::LengthMismatch { .. }
        | Error::BadCuSeqlens { .. }
        | Error::StateMismatch(_)
        | Error::LayerOutOfRange { .. }
        | Error::EmptyBatch { .. } => "ShapeError",
        Error::DTypeMismatch { .. } | Error::UnsupportedDType { .. } => "DTypeError",
        Error::PaddingSlot { .. }
        | Error::SlotOutOfRange { .. }
        | Error::SlotNotAllocated { .. }
        | Error::DoubleFree { .. }
        | Error::DuplicateSlot { .. }
        | Error::StaleSlot { .. }
        | Error::ForeignBatch { .. } => "SlotError",
        Error::NoSpeculativeBuffers
        | Error::DraftMismatch { .. }
        | Error::AcceptedOutOfRange { .. }
        | Error::BadParent { .. }
        | Error::BadSnapshot { .. }
        | Error::NoCurrentVerify { .. }
        | Error::SnapshotOfSkipped { .. } => "SpeculativeError",
        Error::InvalidConfig(_) | Error::Unsupported { .. } => "ConfigError",
        Error::PoolExhausted { .. } => "OutOfMemoryError",
        Error::DeviceMismatch { .. } | Error::Device { .. } => "DeviceError",
        Error::Unavailable { .. } | Error::NotCompiled { .. } => "UnavailableError",
        // A new Rust error kind must be mapped above; until then it is an internal error.
        #[allow(unreachable_patterns)]
        _ => "InternalError",
    }
}

/// Converts a Rust error, keeping its message.
pub fn to_py(e: Error) -> PyErr {
    raise(class_name(&e), e.to_string())
}

/// `Result<T, deltanet::Error>` into `PyResult<T>`.
pub trait IntoPy<T> {
    /// Maps the error with [`to_py`].
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for deltanet::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// Runs `f`, turning a panic into `InternalError` (the message kept).
pub fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            Err(raise("InternalError", format!("deltanet panicked (a bug; please report): {msg}")))
        }
    }
}
