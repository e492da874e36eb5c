//! Tensors cross the ABI as DLPack `DLTensor`s (dlpack.h, the struct torch,
//! JAX, CuPy and TVM export). This file turns one into deltanet's strided
//! view: device, dtype, rank 1-4, non-negative element strides, an aligned
//! address. Everything else (shape, dtype per tensor, unit innermost stride,
//! outputs proven non-overlapping) is checked by the same core validation the
//! Rust API runs; what only C can do wrong, an output aliasing another
//! tensor of the call, is refused here.

use crate::status::{dn_status, CResult, Failure};
use facade::tensor::MAX_RANK;
use facade::{DType, Device, TensorMeta, TensorMut, TensorRef};
use std::ffi::c_void;

/// DLPack `kDLCPU`.
pub const DN_KDL_CPU: i32 = 1;
/// DLPack `kDLCUDA`.
pub const DN_KDL_CUDA: i32 = 2;
/// DLPack `kDLCUDAHost` (pinned host memory: read as host memory).
pub const DN_KDL_CUDA_HOST: i32 = 3;
/// DLPack `kDLExtDev`: deltanet reads it as an Ascend NPU (torch_npu's choice).
pub const DN_KDL_EXT_DEV: i32 = 12;
/// DLPack `kDLCUDAManaged` (read as memory of that CUDA device).
pub const DN_KDL_CUDA_MANAGED: i32 = 13;
/// DLPack `kDLFloat`.
pub const DN_KDL_FLOAT: u8 = 2;
/// DLPack `kDLBfloat`.
pub const DN_KDL_BFLOAT: u8 = 4;

/// DLPack `DLDevice`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDevice {
    /// `DLDeviceType` (`kDLCPU` = 1, `kDLCUDA` = 2, ...).
    pub device_type: i32,
    /// Device ordinal.
    pub device_id: i32,
}

/// DLPack `DLDataType`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDataType {
    /// `DLDataTypeCode` (`kDLFloat` = 2, `kDLBfloat` = 4, ...).
    pub code: u8,
    /// Bits per lane.
    pub bits: u8,
    /// Lanes (1 for every dtype deltanet takes).
    pub lanes: u16,
}

/// DLPack `DLTensor` (unversioned; the layout of DLPack 0.6 to 1.x).
#[repr(C)]
#[derive(Debug)]
pub struct DLTensor {
    /// Base address (`data + byte_offset` is the first element).
    pub data: *mut c_void,
    /// Where the memory is.
    pub device: DLDevice,
    /// Rank.
    pub ndim: i32,
    /// Element type.
    pub dtype: DLDataType,
    /// `ndim` extents.
    pub shape: *mut i64,
    /// `ndim` strides in elements, or NULL for compact row-major.
    pub strides: *mut i64,
    /// Bytes from `data` to the first element.
    pub byte_offset: u64,
}

/// A caller's tensor as deltanet sees it.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Address of the first element.
    pub addr: u64,
    /// Shape, strides, dtype, device.
    pub meta: TensorMeta,
    name: &'static str,
}

impl View {
    /// Bytes from the first to one past the last addressed element.
    fn byte_range(&self) -> (u64, u64) {
        // Bounded by isize::MAX (TensorMeta's construction check).
        (self.addr, self.addr.saturating_add(self.meta.span_bytes() as u64))
    }
}

fn bad(code: dn_status, name: &str, what: String) -> Failure {
    Failure::new(code, format!("tensor `{name}`: {what}"))
}

fn dtype_of(name: &str, t: DLDataType) -> CResult<DType> {
    match (t.code, t.bits, t.lanes) {
        (DN_KDL_FLOAT, 32, 1) => Ok(DType::F32),
        (DN_KDL_FLOAT, 16, 1) => Ok(DType::F16),
        (DN_KDL_BFLOAT, 16, 1) => Ok(DType::BF16),
        (c, b, l) => Err(bad(
            dn_status::DN_ERR_DTYPE_MISMATCH,
            name,
            format!("DLPack dtype (code {c}, {b} bits, {l} lanes) is not f32, bf16 or f16"),
        )),
    }
}

fn device_of(name: &str, d: DLDevice) -> CResult<Device> {
    let id = usize::try_from(d.device_id)
        .map_err(|_| bad(dn_status::DN_ERR_INVALID_ARGUMENT, name, format!("negative device id {}", d.device_id)))?;
    match d.device_type {
        DN_KDL_CPU | DN_KDL_CUDA_HOST => Ok(Device::Host),
        DN_KDL_CUDA | DN_KDL_CUDA_MANAGED => Ok(Device::Cuda(id)),
        DN_KDL_EXT_DEV => Ok(Device::Npu(id)),
        other => Err(bad(dn_status::DN_ERR_DEVICE_MISMATCH, name, format!("DLPack device type {other} is not one deltanet runs on"))),
    }
}

/// Reads a caller's `DLTensor`.
///
/// # Safety
/// `t` is NULL or points to a `DLTensor` whose `shape` (and `strides`, unless
/// NULL) hold `ndim` readable `int64_t` (DLPack's contract).
pub unsafe fn view(name: &'static str, t: *const DLTensor) -> CResult<View> {
    // SAFETY: caller's contract: NULL or a readable DLTensor.
    let Some(t) = (unsafe { t.as_ref() }) else {
        return Err(bad(dn_status::DN_ERR_NULL_POINTER, name, "DLTensor pointer is NULL".into()));
    };
    let device = device_of(name, t.device)?;
    let dtype = dtype_of(name, t.dtype)?;
    let nd = usize::try_from(t.ndim).unwrap_or(0);
    if nd == 0 || nd > MAX_RANK {
        return Err(bad(dn_status::DN_ERR_SHAPE_MISMATCH, name, format!("rank {} (deltanet takes rank 1 to {MAX_RANK})", t.ndim)));
    }
    if t.shape.is_null() {
        return Err(bad(dn_status::DN_ERR_NULL_POINTER, name, "shape is NULL".into()));
    }
    // SAFETY: shape holds ndim entries (caller's contract), nd == ndim > 0.
    let shape_raw = unsafe { std::slice::from_raw_parts(t.shape, nd) };
    let mut shape = [0usize; MAX_RANK];
    for (i, &d) in shape_raw.iter().enumerate() {
        shape[i] =
            usize::try_from(d).map_err(|_| bad(dn_status::DN_ERR_SHAPE_MISMATCH, name, format!("negative extent {d} on dim {i}")))?;
    }
    let meta = if t.strides.is_null() {
        TensorMeta::contiguous(device, dtype, &shape[..nd])
    } else {
        // SAFETY: strides is non-NULL, so it holds ndim entries (caller's contract).
        let st_raw = unsafe { std::slice::from_raw_parts(t.strides, nd) };
        let mut st = [0usize; MAX_RANK];
        for (i, &s) in st_raw.iter().enumerate() {
            st[i] = usize::try_from(s).map_err(|_| {
                bad(dn_status::DN_ERR_BAD_STRIDES, name, format!("negative stride {s} on dim {i} (deltanet takes non-negative strides)"))
            })?;
        }
        TensorMeta::strided(device, dtype, &shape[..nd], &st[..nd])
    }
    .map_err(|e| bad(crate::status::code_of(&e), name, e.to_string()))?;
    let addr = (t.data as u64)
        .checked_add(t.byte_offset)
        .ok_or_else(|| bad(dn_status::DN_ERR_BAD_STRIDES, name, "data + byte_offset overflows".into()))?;
    if meta.numel() > 0 && t.data.is_null() {
        return Err(bad(dn_status::DN_ERR_NULL_POINTER, name, "data is NULL".into()));
    }
    if addr % dtype.size() as u64 != 0 {
        return Err(bad(
            dn_status::DN_ERR_BAD_STRIDES,
            name,
            format!("address {addr:#x} is not aligned to its {}-byte elements", dtype.size()),
        ));
    }
    Ok(View { addr, meta, name })
}

/// Reads an optional `DLTensor` (NULL: absent).
///
/// # Safety
/// As [`view`].
pub unsafe fn view_opt(name: &'static str, t: *const DLTensor) -> CResult<Option<View>> {
    if t.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    unsafe { view(name, t) }.map(Some)
}

/// Refuses a call whose outputs overlap each other or any input (on the same
/// device): kernels read inputs while writing outputs, and on the host that
/// would be undefined behaviour, not just a wrong answer.
pub fn check_disjoint(inputs: &[View], outputs: &[View]) -> CResult {
    for (i, o) in outputs.iter().enumerate() {
        let (os, oe) = o.byte_range();
        let others = inputs.iter().chain(&outputs[i + 1..]);
        for x in others {
            let (xs, xe) = x.byte_range();
            if x.meta.device() == o.meta.device() && os < oe && xs < xe && os < xe && xs < oe {
                return Err(bad(dn_status::DN_ERR_BAD_STRIDES, o.name, format!("output overlaps tensor `{}`", x.name)));
            }
        }
    }
    Ok(())
}

impl View {
    /// The read-only view.
    ///
    /// # Safety
    /// The caller's promise (stated in the header): the memory holds the
    /// tensor as described and stays valid, and nobody writes it, for `'a`.
    pub unsafe fn as_ref<'a>(&self) -> TensorRef<'a> {
        // SAFETY: forwarded contract; span and dtype were checked in `view`.
        unsafe { TensorRef::from_raw(self.addr, self.meta) }
    }

    /// The writable view.
    ///
    /// # Safety
    /// As [`as_ref`](Self::as_ref), and nobody else reads or writes it for
    /// `'a` (other tensors of the call are ruled out by [`check_disjoint`]).
    pub unsafe fn as_mut<'a>(&self) -> TensorMut<'a> {
        // SAFETY: forwarded contract.
        unsafe { TensorMut::from_raw(self.addr, self.meta) }
    }
}
