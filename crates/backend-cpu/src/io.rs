//! Host access to validated tensor views: typed, strided loads into f32 and
//! stores from f32, shareable across worker threads.

use deltanet_core::{DType, Result, TensorMut, TensorRef};
use half::{bf16, f16};

/// Element storage of a read-only view.
#[derive(Clone, Copy)]
enum Data<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

/// A read-only host view: element `(i0, i1, ...)` lives at `sum(i * stride)`.
#[derive(Clone, Copy)]
pub(crate) struct In<'a> {
    data: Data<'a>,
    /// Strides in elements (innermost 1 after validation).
    pub strides: [usize; 4],
}

impl<'a> In<'a> {
    /// Wraps a validated host view.
    pub fn new(t: &TensorRef<'a>) -> Result<Self> {
        let m = t.meta();
        let data = match m.dtype() {
            DType::F32 => Data::F32(t.host_slice::<f32>()?),
            DType::BF16 => Data::Bf16(t.host_slice::<bf16>()?),
            DType::F16 => Data::F16(t.host_slice::<f16>()?),
        };
        let mut strides = [0; 4];
        strides[..m.strides().len()].copy_from_slice(m.strides());
        Ok(In { data, strides })
    }

    /// Offset of `(i, j)` over the two outer dims.
    #[inline(always)]
    pub fn off2(&self, i: usize, j: usize) -> usize {
        i * self.strides[0] + j * self.strides[1]
    }

    /// One element as f32.
    #[inline(always)]
    pub fn get(&self, off: usize) -> f32 {
        match self.data {
            Data::F32(s) => s[off],
            Data::Bf16(s) => s[off].to_f32(),
            Data::F16(s) => s[off].to_f32(),
        }
    }

    /// Hints the CPU to fetch `n` elements from `off` (no effect on results).
    #[inline(always)]
    pub fn prefetch(&self, off: usize, n: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let (ptr, len, size) = match self.data {
                Data::F32(s) => (s.as_ptr() as *const u8, s.len(), 4),
                Data::Bf16(s) => (s.as_ptr() as *const u8, s.len(), 2),
                Data::F16(s) => (s.as_ptr() as *const u8, s.len(), 2),
            };
            if off.checked_add(n).is_none_or(|end| end > len) {
                return;
            }
            let mut b = off * size;
            while b < (off + n) * size {
                // SAFETY: a prefetch of an address inside the slice (checked above); it never faults.
                unsafe { std::arch::x86_64::_mm_prefetch(ptr.add(b) as *const i8, std::arch::x86_64::_MM_HINT_T0) };
                b += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (off, n);
    }

    /// `n` contiguous elements from `off` as they lie, when the view is f32
    /// (no copy); `None` for another dtype.
    #[inline(always)]
    pub fn f32_row(&self, off: usize, n: usize) -> Option<&'a [f32]> {
        match self.data {
            Data::F32(s) => Some(&s[off..off + n]),
            _ => None,
        }
    }

    /// `out.len()` contiguous elements from `off`, widened to f32.
    #[inline(always)]
    pub fn row(&self, off: usize, out: &mut [f32]) {
        let n = out.len();
        match self.data {
            Data::F32(s) => out.copy_from_slice(&s[off..off + n]),
            Data::Bf16(s) => out.iter_mut().zip(&s[off..off + n]).for_each(|(o, x)| *o = x.to_f32()),
            Data::F16(s) => out.iter_mut().zip(&s[off..off + n]).for_each(|(o, x)| *o = x.to_f32()),
        }
    }
}

/// A writable host view shared by worker threads that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    ptr: *mut u8,
    len: usize,
    dtype: DType,
    /// Strides in elements.
    pub strides: [usize; 4],
}

// SAFETY: `Out` is a raw view of memory exclusively borrowed (through the
// `TensorMut` it was made from) for the duration of one kernel call; the
// kernels only write disjoint elements from different threads.
unsafe impl Send for Out {}
// SAFETY: as above; no two threads write the same element, nobody reads it during the call.
unsafe impl Sync for Out {}

impl Out {
    /// Wraps a validated host view. The view must outlive every use of the result.
    pub fn new(t: &mut TensorMut<'_>) -> Result<Self> {
        let m = *t.meta();
        let (ptr, len) = match m.dtype() {
            DType::F32 => {
                let s = t.host_slice_mut::<f32>()?;
                (s.as_mut_ptr() as *mut u8, s.len())
            }
            DType::BF16 => {
                let s = t.host_slice_mut::<bf16>()?;
                (s.as_mut_ptr() as *mut u8, s.len())
            }
            DType::F16 => {
                let s = t.host_slice_mut::<f16>()?;
                (s.as_mut_ptr() as *mut u8, s.len())
            }
        };
        let mut strides = [0; 4];
        strides[..m.strides().len()].copy_from_slice(m.strides());
        Ok(Out { ptr, len, dtype: m.dtype(), strides })
    }

    /// Offset of `(i, j)` over the two outer dims.
    #[inline(always)]
    pub fn off2(&self, i: usize, j: usize) -> usize {
        i * self.strides[0] + j * self.strides[1]
    }

    /// Elements `off..off + n` to write in place, when the view is f32; `None`
    /// for another dtype (then [`Self::store`]).
    ///
    /// # Safety
    /// No other thread may touch these elements while the slice lives, and
    /// no other slice or store of this view may overlap it meanwhile.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn f32_row_mut(&self, off: usize, n: usize) -> Option<&mut [f32]> {
        assert!(off.checked_add(n).is_some_and(|end| end <= self.len), "row outside the view");
        // SAFETY: in bounds (asserted), f32 elements, exclusive by the caller's contract.
        (self.dtype == DType::F32).then(|| unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut f32).add(off), n) })
    }

    /// Runs `f` on the output row of `spare.len()` values at `off`: where it
    /// lies when the view is f32, else on `spare`, which is then stored there
    /// (rounded to the view's dtype).
    ///
    /// # Safety
    /// As [`Self::f32_row_mut`]: the row is the caller's alone during the call.
    #[inline(always)]
    pub unsafe fn write_row(&self, off: usize, spare: &mut [f32], f: impl FnOnce(&mut [f32])) {
        // SAFETY: the caller's contract.
        match unsafe { self.f32_row_mut(off, spare.len()) } {
            Some(y) => f(y),
            None => {
                f(spare);
                // SAFETY: as above.
                unsafe { self.store(off, spare) };
            }
        }
    }

    /// Stores `vals` (rounded to the view's dtype) at `off..off + vals.len()`.
    ///
    /// # Safety
    /// No other thread may touch these elements during the call.
    #[inline(always)]
    pub unsafe fn store(&self, off: usize, vals: &[f32]) {
        // Checked: a wrapped sum would pass a plain `<=` and write outside the view.
        assert!(off.checked_add(vals.len()).is_some_and(|end| end <= self.len), "store outside the view");
        match self.dtype {
            DType::F32 => {
                // SAFETY: in bounds (asserted), exclusive by the caller's contract.
                let d = unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut f32).add(off), vals.len()) };
                d.copy_from_slice(vals);
            }
            DType::BF16 => {
                // SAFETY: as above.
                let d = unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut bf16).add(off), vals.len()) };
                d.iter_mut().zip(vals).for_each(|(o, &x)| *o = bf16::from_f32(x));
            }
            DType::F16 => {
                // SAFETY: as above.
                let d = unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut f16).add(off), vals.len()) };
                d.iter_mut().zip(vals).for_each(|(o, &x)| *o = f16::from_f32(x));
            }
        }
    }
}

/// A raw pool buffer shared by worker threads that write disjoint byte ranges.
#[derive(Clone, Copy)]
pub(crate) struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: made from a `&mut HostBuffer` borrowed for one kernel call; threads
// touch disjoint (slot, head) ranges, or only read ranges nobody writes.
unsafe impl Send for RawBuf {}
// SAFETY: as above.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    /// Wraps a pool buffer's bytes.
    pub fn new(bytes: &mut [u8]) -> Self {
        RawBuf { ptr: bytes.as_mut_ptr(), len: bytes.len() }
    }

    /// A typed pointer to `n` elements of `T` at byte offset `off`.
    ///
    /// # Panics
    /// When the range lies outside the buffer or is misaligned.
    #[inline(always)]
    pub fn typed<T>(&self, off: usize, n: usize) -> *mut T {
        let end = n.checked_mul(std::mem::size_of::<T>()).and_then(|b| b.checked_add(off));
        assert!(end.is_some_and(|end| end <= self.len), "pool range outside its buffer");
        assert!(off.is_multiple_of(std::mem::align_of::<T>()), "misaligned pool range");
        // SAFETY: in bounds (asserted above).
        unsafe { self.ptr.add(off) as *mut T }
    }
}
