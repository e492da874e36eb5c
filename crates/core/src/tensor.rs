//! Typed, strided, borrowed tensor views on any device.
//!
//! A view is an address, a device, a dtype, a shape and element strides,
//! borrowed for `'a` from whatever owns the memory. Views made from Rust
//! slices or pool buffers are bounds-checked at construction; views from raw
//! device pointers are `unsafe` to make and carry the caller's promise.

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use std::marker::PhantomData;

/// Where a tensor's memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory.
    Host,
    /// NVIDIA GPU with this ordinal.
    Cuda(usize),
    /// Ascend NPU with this device id.
    Npu(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Host => f.write_str("host"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Npu(i) => write!(f, "npu:{i}"),
        }
    }
}

/// Largest rank a view can have.
pub const MAX_RANK: usize = 4;

/// Shape, strides (in elements), dtype and device of a view: everything but the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorMeta {
    device: Device,
    dtype: DType,
    rank: usize,
    dims: [usize; MAX_RANK],
    strides: [usize; MAX_RANK],
}

impl TensorMeta {
    /// Contiguous (row-major) metadata.
    pub fn contiguous(device: Device, dtype: DType, shape: &[usize]) -> Result<Self> {
        let strides = contiguous_strides(shape)?;
        Self::strided(device, dtype, shape, &strides[..shape.len()])
    }

    /// Strided metadata (strides in elements).
    pub fn strided(device: Device, dtype: DType, shape: &[usize], strides: &[usize]) -> Result<Self> {
        if shape.len() > MAX_RANK || shape.len() != strides.len() || shape.is_empty() {
            return Err(Error::BadStrides {
                name: "tensor".into(),
                reason: format!("rank {} with {} strides (max rank {MAX_RANK})", shape.len(), strides.len()),
            });
        }
        let mut dims = [1; MAX_RANK];
        let mut st = [0; MAX_RANK];
        dims[..shape.len()].copy_from_slice(shape);
        st[..shape.len()].copy_from_slice(strides);
        let meta = TensorMeta { device, dtype, rank: shape.len(), dims, strides: st };
        meta.checked_extent()?;
        Ok(meta)
    }

    /// Element count and span in checked arithmetic, and the span in bytes
    /// within `isize::MAX` (what pointer offsets allow). Every constructor
    /// runs this, so [`numel`](Self::numel), [`span`](Self::span) and
    /// [`offset`](Self::offset) of an in-range index never wrap.
    fn checked_extent(&self) -> Result<()> {
        let too_big = |what: &str| Error::BadStrides {
            name: "tensor".into(),
            reason: format!("{what} of shape {:?} with strides {:?} overflows", self.shape(), self.strides()),
        };
        let numel = self.shape().iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| too_big("element count"))?;
        if numel == 0 {
            return Ok(());
        }
        let mut last = 0usize;
        for (&d, &s) in self.shape().iter().zip(self.strides()) {
            last = (d - 1).checked_mul(s).and_then(|x| last.checked_add(x)).ok_or_else(|| too_big("span"))?;
        }
        let span = last.checked_add(1).ok_or_else(|| too_big("span"))?;
        if span.checked_mul(self.dtype.size()).is_none_or(|b| b > isize::MAX as usize) {
            return Err(too_big("byte span"));
        }
        Ok(())
    }

    /// Proves that no two in-range indices address the same element, or
    /// refuses: what every output view must satisfy, since kernels write
    /// disjoint indices from parallel tasks. Sufficient test: ordered by
    /// stride, each dim's stride exceeds the span of all smaller-strided dims
    /// (dims of size 1 never repeat an element; an empty view writes nothing).
    pub fn expect_non_overlapping(&self, name: &str) -> Result<()> {
        if self.numel() == 0 {
            return Ok(());
        }
        let mut dims: Vec<(usize, usize)> =
            self.shape().iter().zip(self.strides()).filter(|(d, _)| **d > 1).map(|(d, s)| (*s, *d)).collect();
        dims.sort_unstable();
        let mut covered = 0usize; // span - 1 of the dims placed so far
        for (s, d) in dims {
            if s <= covered {
                return Err(Error::BadStrides {
                    name: name.into(),
                    reason: format!(
                        "output view of shape {:?} with strides {:?} addresses some elements twice",
                        self.shape(),
                        self.strides()
                    ),
                });
            }
            covered += (d - 1) * s; // bounded by the span, checked at construction
        }
        Ok(())
    }

    /// Device.
    pub fn device(&self) -> Device {
        self.device
    }
    /// Dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Dims.
    pub fn shape(&self) -> &[usize] {
        &self.dims[..self.rank]
    }
    /// Strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides[..self.rank]
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }
    /// Elements from the first to one past the last addressed element (0 when empty).
    pub fn span(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        1 + self.shape().iter().zip(self.strides()).map(|(d, s)| (d - 1) * s).sum::<usize>()
    }
    /// Bytes from the first to one past the last addressed element: the range
    /// an overlap check compares (fits, by the construction check on the span).
    pub fn span_bytes(&self) -> usize {
        self.span() * self.dtype().size()
    }
    /// Row-major contiguous.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (d, s) in self.shape().iter().zip(self.strides()).rev() {
            if *d != 1 && *s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }

    /// Element offset of a multi-index.
    #[inline(always)]
    pub fn offset(&self, idx: &[usize]) -> usize {
        idx.iter().zip(self.strides()).map(|(i, s)| i * s).sum()
    }

    /// Checks dims, dtype among `dtypes`, device and a unit innermost stride:
    /// the validation every kernel runs on every view it is handed.
    pub fn expect(&self, name: &str, device: Device, dtypes: &[DType], shape: &[usize]) -> Result<()> {
        if self.device != device {
            return Err(Error::DeviceMismatch { name: name.into(), expected: device, actual: self.device });
        }
        if !dtypes.contains(&self.dtype) {
            return Err(Error::DTypeMismatch { name: name.into(), expected: dtypes[0], actual: self.dtype });
        }
        if self.shape() != shape {
            return Err(Error::shape(name, shape, self.shape()));
        }
        if self.numel() > 0 && self.dims[self.rank - 1] > 1 && self.strides[self.rank - 1] != 1 {
            return Err(Error::BadStrides {
                name: name.into(),
                reason: format!("innermost stride {} (kernels need 1)", self.strides[self.rank - 1]),
            });
        }
        Ok(())
    }

    /// [`expect`](Self::expect) for a view a kernel writes: also proven
    /// non-overlapping ([`expect_non_overlapping`](Self::expect_non_overlapping)).
    pub fn expect_output(&self, name: &str, device: Device, dtypes: &[DType], shape: &[usize]) -> Result<()> {
        self.expect(name, device, dtypes, shape)?;
        self.expect_non_overlapping(name)
    }
}

fn contiguous_strides(shape: &[usize]) -> Result<[usize; MAX_RANK]> {
    if shape.len() > MAX_RANK {
        return Err(Error::BadStrides { name: "tensor".into(), reason: format!("rank {} > {MAX_RANK}", shape.len()) });
    }
    let mut st = [0; MAX_RANK];
    let mut acc = 1usize;
    for i in (0..shape.len()).rev() {
        st[i] = acc;
        // Past an overflow the strides are meaningless; `strided` refuses the
        // shape anyway (its element count overflows too).
        acc = acc.saturating_mul(shape[i]);
    }
    Ok(st)
}

fn check_len(meta: &TensorMeta, offset: usize, len: usize) -> Result<()> {
    if offset.checked_add(meta.span()).is_none_or(|end| end > len) {
        return Err(Error::BadStrides {
            name: "tensor".into(),
            reason: format!("view spans {} elements from offset {offset}, data has {len}", meta.span()),
        });
    }
    Ok(())
}

/// A read-only view.
///
/// ```
/// use deltanet_core::{TensorRef, DType};
/// let data = vec![0.5f32; 2 * 3 * 4];
/// let t = TensorRef::from_slice(&data, &[2, 3, 4]).unwrap();
/// assert_eq!(t.meta().shape(), &[2, 3, 4]);
/// assert_eq!(t.meta().dtype(), DType::F32);
/// assert!(TensorRef::from_slice(&data, &[5, 5]).is_err());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    addr: u64,
    meta: TensorMeta,
    _borrow: PhantomData<&'a [u8]>,
}

/// A writable view.
#[derive(Debug)]
pub struct TensorMut<'a> {
    addr: u64,
    meta: TensorMeta,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> TensorRef<'a> {
    /// Contiguous host view of a slice.
    pub fn from_slice<T: Element>(data: &'a [T], shape: &[usize]) -> Result<Self> {
        let meta = TensorMeta::contiguous(Device::Host, T::DTYPE, shape)?;
        Self::strided(data, 0, meta)
    }

    /// Strided host view of a slice starting at element `offset`.
    pub fn strided<T: Element>(data: &'a [T], offset: usize, meta: TensorMeta) -> Result<Self> {
        if meta.dtype != T::DTYPE || meta.device != Device::Host {
            return Err(Error::DTypeMismatch { name: "tensor".into(), expected: T::DTYPE, actual: meta.dtype });
        }
        check_len(&meta, offset, data.len())?;
        // The address of element `offset`; `wrapping_add` keeps an empty slice valid.
        let addr = data.as_ptr().wrapping_add(offset) as u64;
        Ok(TensorRef { addr, meta, _borrow: PhantomData })
    }

    /// A view of device memory at a raw address.
    ///
    /// # Safety
    /// `addr` must point to memory on `meta.device()` that holds `meta.span()`
    /// elements of `meta.dtype()`, readable and not written by anyone else for `'a`.
    pub unsafe fn from_raw(addr: u64, meta: TensorMeta) -> Self {
        TensorRef { addr, meta, _borrow: PhantomData }
    }

    /// Address of the first element (a host pointer or a device address).
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Metadata.
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    /// A sub-view: same data, another shape/strides starting `offset` elements in.
    /// Fails unless the new view lies inside this one's span.
    pub fn restride(&self, offset: usize, shape: &[usize], strides: &[usize]) -> Result<TensorRef<'a>> {
        let meta = TensorMeta::strided(self.meta.device, self.meta.dtype, shape, strides)?;
        check_len(&meta, offset, self.meta.span())?;
        let addr = self.addr + (offset * self.meta.dtype.size()) as u64;
        Ok(TensorRef { addr, meta, _borrow: PhantomData })
    }

    /// The host elements this view spans, as a slice starting at its first element.
    /// Fails unless the view is on the host and of dtype `T`.
    pub fn host_slice<T: Element>(&self) -> Result<&'a [T]> {
        if self.meta.device != Device::Host {
            return Err(Error::DeviceMismatch { name: "tensor".into(), expected: Device::Host, actual: self.meta.device });
        }
        if self.meta.dtype != T::DTYPE {
            return Err(Error::DTypeMismatch { name: "tensor".into(), expected: T::DTYPE, actual: self.meta.dtype });
        }
        let n = self.meta.span();
        if n == 0 {
            return Ok(&[]);
        }
        // SAFETY: every constructor guarantees `span` readable elements of `T` at
        // `addr` on the host for 'a (checked for slices, promised for raw views).
        Ok(unsafe { std::slice::from_raw_parts(self.addr as *const T, n) })
    }
}

impl<'a> TensorMut<'a> {
    /// Contiguous host view of a mutable slice.
    pub fn from_slice<T: Element>(data: &'a mut [T], shape: &[usize]) -> Result<Self> {
        let meta = TensorMeta::contiguous(Device::Host, T::DTYPE, shape)?;
        Self::strided(data, 0, meta)
    }

    /// Strided host view of a mutable slice starting at element `offset`.
    pub fn strided<T: Element>(data: &'a mut [T], offset: usize, meta: TensorMeta) -> Result<Self> {
        if meta.dtype != T::DTYPE || meta.device != Device::Host {
            return Err(Error::DTypeMismatch { name: "tensor".into(), expected: T::DTYPE, actual: meta.dtype });
        }
        check_len(&meta, offset, data.len())?;
        let addr = data.as_mut_ptr().wrapping_add(offset) as u64;
        Ok(TensorMut { addr, meta, _borrow: PhantomData })
    }

    /// A writable view of device memory at a raw address.
    ///
    /// # Safety
    /// As [`TensorRef::from_raw`], and nobody else reads or writes the memory for `'a`.
    pub unsafe fn from_raw(addr: u64, meta: TensorMeta) -> Self {
        TensorMut { addr, meta, _borrow: PhantomData }
    }

    /// Address of the first element.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Metadata.
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    /// Reborrows as a shorter-lived writable view.
    pub fn reborrow(&mut self) -> TensorMut<'_> {
        TensorMut { addr: self.addr, meta: self.meta, _borrow: PhantomData }
    }

    /// Reborrows read-only.
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef { addr: self.addr, meta: self.meta, _borrow: PhantomData }
    }

    /// The host elements this view spans, mutable. Fails unless on the host and of dtype `T`.
    pub fn host_slice_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        if self.meta.device != Device::Host {
            return Err(Error::DeviceMismatch { name: "tensor".into(), expected: Device::Host, actual: self.meta.device });
        }
        if self.meta.dtype != T::DTYPE {
            return Err(Error::DTypeMismatch { name: "tensor".into(), expected: T::DTYPE, actual: self.meta.dtype });
        }
        let n = self.meta.span();
        if n == 0 {
            return Ok(&mut []);
        }
        // SAFETY: constructors guarantee `span` writable elements of `T` at `addr`,
        // exclusively borrowed for 'a; `&mut self` keeps this borrow unique.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut T, n) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_bounds_checked() {
        let data = vec![0f32; 10];
        let ok = TensorMeta::strided(Device::Host, DType::F32, &[2, 3], &[5, 1]).unwrap();
        assert_eq!(ok.span(), 8);
        assert!(!ok.is_contiguous());
        assert!(TensorRef::strided(&data, 2, ok).is_ok());
        assert!(TensorRef::strided(&data, 3, ok).is_err());
        let t = TensorRef::from_slice(&data, &[10]).unwrap();
        assert!(t.host_slice::<half::bf16>().is_err());
        assert_eq!(t.host_slice::<f32>().unwrap().len(), 10);
    }

    #[test]
    fn expect_checks_everything() {
        let m = TensorMeta::contiguous(Device::Host, DType::F32, &[2, 3]).unwrap();
        assert!(m.expect("x", Device::Host, &[DType::F32], &[2, 3]).is_ok());
        assert!(matches!(m.expect("x", Device::Cuda(0), &[DType::F32], &[2, 3]), Err(Error::DeviceMismatch { .. })));
        assert!(matches!(m.expect("x", Device::Host, &[DType::BF16], &[2, 3]), Err(Error::DTypeMismatch { .. })));
        assert!(matches!(m.expect("x", Device::Host, &[DType::F32], &[3, 2]), Err(Error::ShapeMismatch { .. })));
        let s = TensorMeta::strided(Device::Host, DType::F32, &[2, 3], &[1, 2]).unwrap();
        assert!(matches!(s.expect("x", Device::Host, &[DType::F32], &[2, 3]), Err(Error::BadStrides { .. })));
    }
}
