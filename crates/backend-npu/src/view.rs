//! [`View`]: a strided view (address, dtype, dims, element strides) of one
//! tensor an operator call reads or writes, and the row slicing the
//! dispatcher cuts batches with. It becomes an `aclTensor` descriptor
//! ([`TensorDesc`]) right before each call.

use crate::api::{AclDType, DevPtr, TensorDesc};
use crate::safe::DeviceBuffer;
use deltanet_core::TensorMeta;

/// A strided view of one tensor of an operation.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub(crate) addr: DevPtr,
    pub(crate) dtype: AclDType,
    pub(crate) shape: Vec<usize>,
    pub(crate) strides: Vec<usize>,
}

impl View {
    /// The view of a caller's tensor at `addr`.
    pub(crate) fn of(addr: DevPtr, m: &TensorMeta) -> Self {
        View { addr, dtype: m.dtype().into(), shape: m.shape().to_vec(), strides: m.strides().to_vec() }
    }
    /// A row-major view of a whole buffer.
    pub(crate) fn contiguous(buf: &DeviceBuffer, dtype: AclDType, shape: &[usize]) -> Self {
        let d = TensorDesc::contiguous(buf.ptr(), dtype, shape);
        View { addr: buf.ptr(), dtype, shape: shape.to_vec(), strides: d.strides.iter().map(|&s| s as usize).collect() }
    }
    /// A row-major view of `shape` at `addr` (a table inside a pool buffer).
    pub(crate) fn contiguous_at(addr: DevPtr, dtype: AclDType, shape: &[usize]) -> Self {
        let d = TensorDesc::contiguous(addr, dtype, shape);
        View { addr, dtype, shape: shape.to_vec(), strides: d.strides.iter().map(|&s| s as usize).collect() }
    }
    /// Its `aclCreateTensor` descriptor.
    pub(crate) fn desc(&self) -> TensorDesc {
        TensorDesc::strided(self.addr, self.dtype, &self.shape, &self.strides)
    }
    /// Rows `t0..t0+n` of the leading dim.
    pub(crate) fn rows(&self, t0: usize, n: usize) -> View {
        let mut v = self.clone();
        v.addr = self.row_addr(t0);
        v.shape[0] = n;
        v
    }
    /// Address of row `t` (leading dim).
    pub(crate) fn row_addr(&self, t: usize) -> DevPtr {
        self.addr + (t * self.strides[0] * self.dtype.size()) as u64
    }
}
