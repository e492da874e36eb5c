//! Borrowing a caller's tensor without copying it: DLPack (`__dlpack__`,
//! `__dlpack_device__`, a `"dltensor"` capsule holding a `DLManagedTensor`)
//! first, the numpy array interface (`__array_interface__`) otherwise.
//! The result is an address plus a [`TensorMeta`] (shape, element strides,
//! dtype, device) that becomes deltanet's strided `TensorRef`/`TensorMut`.
//!
//! Lifetime: a [`Borrowed`] holds the producer object and, for DLPack, owns
//! the managed tensor (the capsule is renamed `"used_dltensor"` as the spec
//! asks of a consumer, and the producer's deleter runs when the `Borrowed` is
//! dropped). Drop it with the GIL held, after the kernel returned: numpy's
//! deleter touches Python objects.

use crate::errors::raise;
use deltanet::{DType, Device, TensorMeta, TensorMut, TensorRef};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyCapsule, PyDict};
use std::ffi::{c_void, CStr};

// --- DLPack ABI (dlpack.h, unversioned DLManagedTensor) ---------------------------------------

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

const KDL_CPU: i32 = 1;
const KDL_CUDA: i32 = 2;
const KDL_CUDA_HOST: i32 = 3;
const KDL_CUDA_MANAGED: i32 = 13;
const KDL_FLOAT: u8 = 2;
const KDL_BFLOAT: u8 = 4;

static DLTENSOR: &CStr = c"dltensor";
static USED_DLTENSOR: &CStr = c"used_dltensor";

/// The message for a device tensor until the CUDA backend runs on the caller's stream.
pub const CUDA_STREAM_MSG: &str = "CUDA backend does not accept an external stream yet: \
     deltanet's Python functions run on the CPU backend for now; pass host (CPU) tensors";

/// A caller's tensor, borrowed: address, metadata, and what keeps the memory alive.
pub struct Borrowed<'py> {
    /// The tensor's name in error messages.
    pub name: &'static str,
    addr: u64,
    meta: TensorMeta,
    _owner: Bound<'py, PyAny>,
    managed: *mut DLManagedTensor,
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if self.managed.is_null() {
            return;
        }
        // SAFETY: `managed` came from a "dltensor" capsule we renamed to
        // "used_dltensor", which makes us its only owner (DLPack spec); the
        // deleter is called exactly once, here, with the GIL held (the
        // `Bound<'py>` field proves the GIL is held for 'py).
        unsafe {
            if let Some(del) = (*self.managed).deleter {
                del(self.managed);
            }
        }
    }
}

fn dtype_of(code: u8, bits: u8, lanes: u16, name: &str) -> PyResult<DType> {
    match (code, bits, lanes) {
        (KDL_FLOAT, 32, 1) => Ok(DType::F32),
        (KDL_FLOAT, 16, 1) => Ok(DType::F16),
        (KDL_BFLOAT, 16, 1) => Ok(DType::BF16),
        _ => Err(raise(
            "DTypeError",
            format!("tensor `{name}`: DLPack dtype (code {code}, {bits} bits, {lanes} lanes) is not f32, bf16 or f16"),
        )),
    }
}

fn meta_of(name: &str, device: Device, dtype: DType, shape: &[i64], strides: Option<&[i64]>) -> PyResult<TensorMeta> {
    if shape.is_empty() || shape.len() > deltanet::tensor::MAX_RANK {
        return Err(raise("ShapeError", format!("tensor `{name}`: rank {} (deltanet takes rank 1 to 4)", shape.len())));
    }
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let st: Vec<usize> = match strides {
        None => {
            let mut s = vec![0usize; dims.len()];
            let mut acc = 1usize;
            for i in (0..dims.len()).rev() {
                s[i] = acc;
                acc = acc.saturating_mul(dims[i]);
            }
            s
        }
        Some(st) => {
            let mut out = Vec::with_capacity(st.len());
            for (i, &s) in st.iter().enumerate() {
                if s < 0 {
                    return Err(raise(
                        "LayoutError",
                        format!("tensor `{name}`: negative stride {s} on dim {i} (flip the tensor into a new one first)"),
                    ));
                }
                out.push(s as usize);
            }
            out
        }
    };
    TensorMeta::strided(device, dtype, &dims, &st).map_err(|e| raise("LayoutError", format!("tensor `{name}`: {e}")))
}

fn dlpack_device(obj: &Bound<'_, PyAny>) -> PyResult<Option<(i32, i32)>> {
    if !obj.hasattr("__dlpack_device__")? {
        return Ok(None);
    }
    let (t, id): (i32, i32) = obj.call_method0("__dlpack_device__")?.extract()?;
    Ok(Some((t, id)))
}

fn device_of(name: &str, device_type: i32, id: i32) -> PyResult<Device> {
    match device_type {
        KDL_CPU | KDL_CUDA_HOST => Ok(Device::Host),
        KDL_CUDA | KDL_CUDA_MANAGED => {
            let _ = id;
            Err(raise("UnavailableError", format!("tensor `{name}` is on cuda:{id}: {CUDA_STREAM_MSG}")))
        }
        other => Err(raise("DeviceError", format!("tensor `{name}`: DLPack device type {other} is not supported"))),
    }
}

fn from_dlpack<'py>(name: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<Borrowed<'py>> {
    from_capsule(name, obj, obj.call_method0("__dlpack__")?)
}

/// `torch.Tensor` and torch's C exporter `torch.utils.dlpack.to_dlpack`, looked up once.
///
/// Why: `Tensor.__dlpack__` and `__dlpack_device__` are Python methods (a few microseconds
/// each), and a decode step borrows a dozen tensors; the C exporter makes the same capsule
/// (the device is then read from it) in a fraction of that.
fn torch_exporter(py: Python<'_>) -> Option<&'static (Py<PyAny>, Py<PyAny>)> {
    static TORCH: GILOnceCell<(Py<PyAny>, Py<PyAny>)> = GILOnceCell::new();
    if let Some(t) = TORCH.get(py) {
        return Some(t);
    }
    // Only once the caller has imported torch: deltanet does not import it (and looks again later).
    py.import("sys").ok()?.getattr("modules").ok()?.get_item("torch").ok()?;
    let tensor = py.import("torch").ok()?.getattr("Tensor").ok()?;
    let to_dlpack = py.import("torch.utils.dlpack").ok()?.getattr("to_dlpack").ok()?;
    let _ = TORCH.set(py, (tensor.unbind(), to_dlpack.unbind()));
    TORCH.get(py)
}

/// A plain `torch.Tensor` (not a subclass, which may override the export) through torch's C exporter.
fn from_torch<'py>(name: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<Option<Borrowed<'py>>> {
    let py = obj.py();
    let Some((tensor, to_dlpack)) = torch_exporter(py) else { return Ok(None) };
    if !obj.get_type().is(tensor.bind(py)) {
        return Ok(None);
    }
    from_capsule(name, obj, to_dlpack.bind(py).call1((obj,))?).map(Some)
}

fn from_capsule<'py>(name: &'static str, obj: &Bound<'py, PyAny>, capsule: Bound<'py, PyAny>) -> PyResult<Borrowed<'py>> {
    let capsule = capsule
        .downcast::<PyCapsule>()
        .map_err(|_| raise("LayoutError", format!("tensor `{name}`: __dlpack__ did not return a capsule")))?;
    // SAFETY: `capsule` is a live PyCapsule (downcast checked); PyCapsule_IsValid only reads it.
    if unsafe { ffi::PyCapsule_IsValid(capsule.as_ptr(), DLTENSOR.as_ptr()) } != 1 {
        return Err(raise(
            "LayoutError",
            format!("tensor `{name}`: not a fresh \"dltensor\" capsule (already consumed, or a versioned one)"),
        ));
    }
    // SAFETY: the capsule is valid with name "dltensor", so its pointer is a DLManagedTensor (DLPack spec).
    let managed = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), DLTENSOR.as_ptr()) } as *mut DLManagedTensor;
    if managed.is_null() {
        return Err(PyErr::fetch(obj.py()));
    }
    // Take ownership before anything can fail, so the deleter runs on every path.
    // SAFETY: renaming a valid capsule to a 'static name; the producer's capsule
    // destructor then leaves the managed tensor to us (DLPack spec).
    if unsafe { ffi::PyCapsule_SetName(capsule.as_ptr(), USED_DLTENSOR.as_ptr()) } != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    let mut b = Borrowed {
        name,
        addr: 0,
        meta: TensorMeta::contiguous(Device::Host, DType::F32, &[0]).expect("rank 1"),
        _owner: obj.clone(),
        managed,
    };
    // SAFETY: `managed` is a live DLManagedTensor owned by `b` until its drop; shape has
    // `ndim` entries and strides is null or has `ndim` entries (DLPack spec).
    let (t, shape, strides) = unsafe {
        let t = &(*managed).dl_tensor;
        let nd = t.ndim.max(0) as usize;
        let shape = if nd == 0 { &[][..] } else { std::slice::from_raw_parts(t.shape, nd) };
        let strides = if t.strides.is_null() || nd == 0 { None } else { Some(std::slice::from_raw_parts(t.strides, nd)) };
        (t, shape.to_vec(), strides.map(|s| s.to_vec()))
    };
    let device = device_of(name, t.device.device_type, t.device.device_id)?;
    let dtype = dtype_of(t.dtype.code, t.dtype.bits, t.dtype.lanes, name)?;
    b.meta = meta_of(name, device, dtype, &shape, strides.as_deref())?;
    b.addr = (t.data as u64).wrapping_add(t.byte_offset);
    Ok(b)
}

fn from_array_interface<'py>(name: &'static str, obj: &Bound<'py, PyAny>, writable: bool) -> PyResult<Borrowed<'py>> {
    let ai = obj.getattr("__array_interface__")?;
    let ai = ai.downcast::<PyDict>()?;
    let get = |k: &str| -> PyResult<Bound<'py, PyAny>> {
        ai.get_item(k)?.ok_or_else(|| raise("LayoutError", format!("tensor `{name}`: __array_interface__ lacks `{k}`")))
    };
    let (ptr, readonly): (usize, bool) = get("data")?.extract()?;
    if writable && readonly {
        return Err(raise("LayoutError", format!("tensor `{name}` is read-only but is written by this call")));
    }
    let typestr: String = get("typestr")?.extract()?;
    let dtype = match typestr.as_str() {
        "<f4" | "=f4" => DType::F32,
        "<f2" | "=f2" => DType::F16,
        t => return Err(raise("DTypeError", format!("tensor `{name}`: array dtype `{t}` is not f32 or f16 (numpy has no bf16)"))),
    };
    let shape: Vec<i64> = get("shape")?.extract()?;
    let strides = match ai.get_item("strides")? {
        Some(s) if !s.is_none() => {
            let bytes: Vec<i64> = s.extract()?;
            let es = dtype.size() as i64;
            if bytes.iter().any(|b| b % es != 0) {
                return Err(raise("LayoutError", format!("tensor `{name}`: byte strides {bytes:?} are not multiples of the element size")));
            }
            Some(bytes.iter().map(|b| b / es).collect::<Vec<_>>())
        }
        _ => None,
    };
    if ai.get_item("mask")?.is_some_and(|m| !m.is_none()) {
        return Err(raise("LayoutError", format!("tensor `{name}`: masked arrays are not supported")));
    }
    let meta = meta_of(name, Device::Host, dtype, &shape, strides.as_deref())?;
    Ok(Borrowed { name, addr: ptr as u64, meta, _owner: obj.clone(), managed: std::ptr::null_mut() })
}

/// Borrows `obj` (a torch tensor, numpy array or any DLPack / array-interface producer).
pub fn borrow<'py>(name: &'static str, obj: &Bound<'py, PyAny>, writable: bool) -> PyResult<Borrowed<'py>> {
    // torch's exporter takes tensors that require grad (deltanet computes no gradients) and
    // the capsule carries the device, checked in `from_capsule`.
    if let Some(b) = from_torch(name, obj)? {
        return Ok(b);
    }
    // torch refuses to export a tensor that requires grad; deltanet computes no
    // gradients, so borrow the detached alias (same memory, no copy).
    let detached;
    let obj = if obj.hasattr("requires_grad")? && obj.getattr("requires_grad")?.is_truthy()? {
        detached = obj.call_method0("detach")?;
        &detached
    } else {
        obj
    };
    if let Some((t, id)) = dlpack_device(obj)? {
        device_of(name, t, id)?;
        if obj.hasattr("__array_interface__")? {
            // numpy: the array interface is equivalent and also works for read-only arrays.
            return from_array_interface(name, obj, writable);
        }
        return from_dlpack(name, obj);
    }
    if obj.hasattr("__array_interface__")? {
        return from_array_interface(name, obj, writable);
    }
    Err(raise(
        "DTypeError",
        format!("`{name}` must be a tensor (torch, numpy, or a DLPack / array-interface producer), got {}", obj.get_type().name()?),
    ))
}

/// Borrows an optional tensor (`None` stays `None`).
pub fn borrow_opt<'py>(name: &'static str, obj: Option<&Bound<'py, PyAny>>, writable: bool) -> PyResult<Option<Borrowed<'py>>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(borrow(name, o, writable)?)),
        _ => Ok(None),
    }
}

impl Borrowed<'_> {
    /// Shape, strides, dtype, device.
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }
    /// Address of element 0.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Dims.
    pub fn shape(&self) -> &[usize] {
        self.meta.shape()
    }

    /// The whole tensor as a read-only view.
    pub fn view(&self) -> TensorRef<'_> {
        // SAFETY: the producer guarantees `span` elements at `addr` for as long as
        // the DLPack capsule / owning object lives, which `self` keeps alive for the view's life.
        unsafe { TensorRef::from_raw(self.addr, self.meta) }
    }

    /// A view with another shape and strides, `offset` elements in; must lie inside the tensor.
    pub fn sub(&self, offset: usize, shape: &[usize], strides: &[usize]) -> PyResult<TensorRef<'_>> {
        self.view().restride(offset, shape, strides).map_err(|e| raise("LayoutError", format!("tensor `{}`: {e}", self.name)))
    }

    /// A writable view with another shape and strides (see [`Borrowed::sub`]).
    ///
    /// Several writable views of one tensor may exist; callers hand kernels
    /// disjoint ones (distinct batch rows, or one at a time).
    pub fn sub_mut(&self, offset: usize, shape: &[usize], strides: &[usize]) -> PyResult<TensorMut<'_>> {
        let r = self.sub(offset, shape, strides)?;
        // SAFETY: as `view`; the caller writes this memory for the call (it asked
        // for an output), and deltanet never hands two overlapping writable views
        // to one kernel (the sub-views it makes are of distinct rows).
        Ok(unsafe { TensorMut::from_raw(r.addr(), *r.meta()) })
    }

    /// The same memory with its last two dimensions swapped (a transpose; nothing is copied).
    pub fn transpose_last(mut self) -> PyResult<Self> {
        let (mut shape, mut strides) = (self.shape().to_vec(), self.strides().to_vec());
        let r = shape.len();
        if r < 2 {
            return Err(raise("ShapeError", format!("tensor `{}`: rank {r} has no last two dims to swap", self.name)));
        }
        shape.swap(r - 2, r - 1);
        strides.swap(r - 2, r - 1);
        self.meta = TensorMeta::strided(self.meta.device(), self.meta.dtype(), &shape, &strides)
            .map_err(|e| raise("LayoutError", format!("tensor `{}`: {e}", self.name)))?;
        Ok(self)
    }

    /// Element strides.
    pub fn strides(&self) -> &[usize] {
        self.meta.strides()
    }

    /// The raw bytes when the tensor is a contiguous host f32 tensor (the fast path of state import).
    pub fn contiguous_f32(&self) -> Option<&[f32]> {
        if self.meta.dtype() != DType::F32 || !self.meta.is_contiguous() {
            return None;
        }
        self.view().host_slice::<f32>().ok()
    }

    /// All elements, row-major, widened to f32 (any strides).
    pub fn to_f32(&self) -> PyResult<Vec<f32>> {
        let v = self.view();
        let m = *v.meta();
        let n = m.numel();
        let mut out = Vec::with_capacity(n);
        let shape = m.shape().to_vec();
        let strides = m.strides().to_vec();
        macro_rules! gather {
            ($t:ty) => {{
                let data = v.host_slice::<$t>().map_err(crate::errors::to_py)?;
                let mut idx = vec![0usize; shape.len()];
                for _ in 0..n {
                    let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
                    out.push(deltanet::Element::to_f32(data[off]));
                    for d in (0..shape.len()).rev() {
                        idx[d] += 1;
                        if idx[d] < shape[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
            }};
        }
        match m.dtype() {
            DType::F32 => gather!(f32),
            DType::BF16 => gather!(half::bf16),
            DType::F16 => gather!(half::f16),
        }
        Ok(out)
    }

    /// Overwrites every element (row-major `values`, rounded to the dtype), any strides.
    pub fn write_f32(&self, values: &[f32]) -> PyResult<()> {
        let mut v = self.sub_mut(0, self.meta.shape(), self.meta.strides())?;
        let m = *v.meta();
        if values.len() != m.numel() {
            return Err(raise("ShapeError", format!("tensor `{}`: {} values for {} elements", self.name, values.len(), m.numel())));
        }
        let shape = m.shape().to_vec();
        let strides = m.strides().to_vec();
        macro_rules! scatter {
            ($t:ty) => {{
                let data = v.host_slice_mut::<$t>().map_err(crate::errors::to_py)?;
                let mut idx = vec![0usize; shape.len()];
                for &x in values {
                    let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
                    data[off] = <$t as deltanet::Element>::from_f32(x);
                    for d in (0..shape.len()).rev() {
                        idx[d] += 1;
                        if idx[d] < shape[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
            }};
        }
        match m.dtype() {
            DType::F32 => scatter!(f32),
            DType::BF16 => scatter!(half::bf16),
            DType::F16 => scatter!(half::f16),
        }
        Ok(())
    }
}

/// What a kernel would see of `x`: `(address, shape, element strides, dtype)`.
/// Tests compare the address with `tensor.data_ptr()` (zero copy).
#[pyfunction]
pub fn tensor_info(x: &Bound<'_, PyAny>) -> PyResult<(u64, Vec<usize>, Vec<usize>, &'static str)> {
    crate::errors::guard(|| {
        let b = borrow("x", x, false)?;
        Ok((b.addr(), b.shape().to_vec(), b.strides().to_vec(), b.meta().dtype().name()))
    })
}
