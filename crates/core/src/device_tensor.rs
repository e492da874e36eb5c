//! An owned tensor in a backend's memory, for callers that stage inputs on a
//! device (tests, the CLI, engines without their own allocator).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::DeviceMemory;
use crate::tensor::{TensorMeta, TensorMut, TensorRef};

/// A contiguous tensor owned in `M`'s memory.
///
/// ```
/// use deltanet_core::{DeviceTensor, HostMemory, DType};
/// let t = DeviceTensor::from_f32(&HostMemory, DType::BF16, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
/// assert_eq!(t.to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
/// assert_eq!(t.view().meta().dtype(), DType::BF16);
/// ```
pub struct DeviceTensor<M: DeviceMemory> {
    memory: M,
    buf: M::Buffer,
    meta: TensorMeta,
}

impl<M: DeviceMemory> DeviceTensor<M> {
    /// Zeroed tensor.
    pub fn zeros(memory: &M, dtype: DType, shape: &[usize]) -> Result<Self> {
        let meta = TensorMeta::contiguous(memory.device(), dtype, shape)?;
        let buf = memory.alloc_zeroed(meta.numel() * dtype.size())?;
        Ok(DeviceTensor { memory: memory.clone(), buf, meta })
    }

    /// Tensor holding `values` (row-major) rounded to `dtype`.
    pub fn from_f32(memory: &M, dtype: DType, shape: &[usize], values: &[f32]) -> Result<Self> {
        let mut t = Self::zeros(memory, dtype, shape)?;
        t.write_f32(values)?;
        Ok(t)
    }

    /// Overwrites every element from f32 values (rounded to the dtype).
    pub fn write_f32(&mut self, values: &[f32]) -> Result<()> {
        if values.len() != self.meta.numel() {
            return Err(Error::shape("values", self.meta.shape(), &[values.len()]));
        }
        self.memory.write(&mut self.buf, 0, &self.meta.dtype().encode_vec(values))
    }

    /// All elements as f32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; self.meta.numel() * self.meta.dtype().size()];
        self.memory.read(&self.buf, 0, &mut bytes)?;
        Ok(self.meta.dtype().decode_vec(&bytes))
    }

    /// Metadata.
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    /// Read-only view of the whole tensor.
    pub fn view(&self) -> TensorRef<'_> {
        // SAFETY: the buffer holds numel elements of the dtype on this device and is borrowed shared for the view's life.
        unsafe { TensorRef::from_raw(self.memory.addr(&self.buf), self.meta) }
    }

    /// Writable view of the whole tensor.
    pub fn view_mut(&mut self) -> TensorMut<'_> {
        // SAFETY: as in `view`, borrowed exclusively for the view's life.
        unsafe { TensorMut::from_raw(self.memory.addr(&self.buf), self.meta) }
    }
}
