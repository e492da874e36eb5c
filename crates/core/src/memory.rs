//! Device memory as the pool sees it: allocate zeroed, copy, zero, and move
//! bytes to and from the host. One implementation per backend; the pool is
//! written once over this trait.

use crate::error::{Error, Result};
use crate::tensor::Device;

/// A backend's memory: what the [`StatePool`](crate::StatePool) needs to own its buffers.
///
/// Offsets and lengths are in bytes. Implementations must reject ranges outside
/// a buffer with an error instead of touching memory.
pub trait DeviceMemory: Clone + Send + Sync + 'static {
    /// An owned allocation.
    type Buffer: Send + Sync + 'static;

    /// The device the buffers live on.
    fn device(&self) -> Device;
    /// Allocates `bytes` zeroed bytes. An allocation the host or device
    /// cannot satisfy is [`Error::OutOfMemory`] with the bytes asked, never an abort.
    fn alloc_zeroed(&self, bytes: usize) -> Result<Self::Buffer>;
    /// Length in bytes.
    fn len(&self, buf: &Self::Buffer) -> usize;
    /// Address of the first byte (host pointer or device address), for views and descriptors.
    fn addr(&self, buf: &Self::Buffer) -> u64;
    /// Copies `bytes` bytes inside one buffer; the ranges must not overlap.
    fn copy_within(&self, buf: &mut Self::Buffer, src: usize, dst: usize, bytes: usize) -> Result<()>;
    /// Copies `bytes` bytes from one buffer to another.
    fn copy_between(&self, src: &Self::Buffer, src_off: usize, dst: &mut Self::Buffer, dst_off: usize, bytes: usize) -> Result<()>;
    /// Zeroes a byte range.
    fn zero(&self, buf: &mut Self::Buffer, off: usize, bytes: usize) -> Result<()>;
    /// Device to host.
    fn read(&self, buf: &Self::Buffer, off: usize, dst: &mut [u8]) -> Result<()>;
    /// Host to device.
    fn write(&self, buf: &mut Self::Buffer, off: usize, src: &[u8]) -> Result<()>;
}

/// Checks a byte range against a buffer length.
pub fn check_range(len: usize, off: usize, bytes: usize) -> Result<()> {
    if off.checked_add(bytes).is_none_or(|end| end > len) {
        return Err(Error::Device {
            backend: "memory".into(),
            op: "range check".into(),
            message: format!("range {off}..{} outside a buffer of {len} bytes", off.saturating_add(bytes)),
        });
    }
    Ok(())
}

/// Host memory: the CPU backend's.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostMemory;

/// 64-byte aligned storage unit, so typed views of any element type are aligned.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A 64-byte aligned host allocation.
#[derive(Clone)]
pub struct HostBuffer {
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBuffer({} bytes)", self.len)
    }
}

impl HostBuffer {
    /// Zeroed buffer of `len` bytes; [`Error::OutOfMemory`] when the allocator
    /// refuses (never an abort).
    pub fn zeroed(len: usize) -> Result<Self> {
        let n = len.div_ceil(64);
        if n == 0 {
            return Ok(HostBuffer { lines: Vec::new(), len });
        }
        let oom = || Error::OutOfMemory { bytes: len };
        let layout = std::alloc::Layout::array::<Line>(n).map_err(|_| oom())?;
        // SAFETY: `layout` has non-zero size (n > 0).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Line;
        if ptr.is_null() {
            return Err(oom());
        }
        // SAFETY: `ptr` was allocated by the global allocator with the layout of
        // `[Line; n]` (what `Vec<Line>` with capacity `n` uses), and all-zero
        // bytes are a valid `Line` (it is `Zeroable`), so `n` elements are initialised.
        let mut lines = unsafe { Vec::from_raw_parts(ptr, n, n) };
        // Fault the pages in now, one write per 4 KiB page (volatile, so the
        // store of the zero already there is kept): a pool's states are first
        // written by the first prefill, and without this the serving path paid
        // the kernel's page zeroing (77% of a `deltanet run` profile, in
        // `clear_page`). A pool is made once, at start-up, so it pays it there.
        for l in lines.iter_mut().step_by(64) {
            // SAFETY: `l` is a valid, exclusively borrowed line of the buffer.
            unsafe { std::ptr::write_volatile(&mut l.0[0], 0) };
        }
        Ok(HostBuffer { lines, len })
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
    /// The bytes, mutable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
    /// The buffer as elements of `T` (aligned by construction).
    pub fn typed<T: bytemuck::Pod>(&self) -> &[T] {
        bytemuck::cast_slice(&self.bytes()[..self.len / std::mem::size_of::<T>() * std::mem::size_of::<T>()])
    }
    /// The buffer as mutable elements of `T`.
    pub fn typed_mut<T: bytemuck::Pod>(&mut self) -> &mut [T] {
        let n = self.len / std::mem::size_of::<T>() * std::mem::size_of::<T>();
        bytemuck::cast_slice_mut(&mut self.bytes_mut()[..n])
    }
}

impl DeviceMemory for HostMemory {
    type Buffer = HostBuffer;

    fn device(&self) -> Device {
        Device::Host
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<HostBuffer> {
        HostBuffer::zeroed(bytes)
    }
    fn len(&self, buf: &HostBuffer) -> usize {
        buf.len
    }
    fn addr(&self, buf: &HostBuffer) -> u64 {
        buf.lines.as_ptr() as u64
    }
    fn copy_within(&self, buf: &mut HostBuffer, src: usize, dst: usize, bytes: usize) -> Result<()> {
        check_range(buf.len, src, bytes)?;
        check_range(buf.len, dst, bytes)?;
        buf.bytes_mut().copy_within(src..src + bytes, dst);
        Ok(())
    }
    fn copy_between(&self, src: &HostBuffer, src_off: usize, dst: &mut HostBuffer, dst_off: usize, bytes: usize) -> Result<()> {
        check_range(src.len, src_off, bytes)?;
        check_range(dst.len, dst_off, bytes)?;
        dst.bytes_mut()[dst_off..dst_off + bytes].copy_from_slice(&src.bytes()[src_off..src_off + bytes]);
        Ok(())
    }
    fn zero(&self, buf: &mut HostBuffer, off: usize, bytes: usize) -> Result<()> {
        check_range(buf.len, off, bytes)?;
        buf.bytes_mut()[off..off + bytes].fill(0);
        Ok(())
    }
    fn read(&self, buf: &HostBuffer, off: usize, dst: &mut [u8]) -> Result<()> {
        check_range(buf.len, off, dst.len())?;
        dst.copy_from_slice(&buf.bytes()[off..off + dst.len()]);
        Ok(())
    }
    fn write(&self, buf: &mut HostBuffer, off: usize, src: &[u8]) -> Result<()> {
        check_range(buf.len, off, src.len())?;
        buf.bytes_mut()[off..off + src.len()].copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_memory_ops_and_range_errors() {
        let m = HostMemory;
        let mut a = m.alloc_zeroed(100).unwrap();
        assert_eq!(m.addr(&a) % 64, 0);
        m.write(&mut a, 10, &[1, 2, 3]).unwrap();
        m.copy_within(&mut a, 10, 50, 3).unwrap();
        let mut out = [0u8; 3];
        m.read(&a, 50, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        m.zero(&mut a, 50, 3).unwrap();
        m.read(&a, 50, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0]);
        assert!(m.write(&mut a, 99, &[1, 2]).is_err());
        assert!(m.copy_within(&mut a, 0, 98, 3).is_err());
        let mut b = m.alloc_zeroed(4).unwrap();
        m.copy_between(&a, 10, &mut b, 0, 3).unwrap();
        assert_eq!(&b.bytes()[..3], &[1, 2, 3]);
    }

    #[test]
    fn impossible_allocation_is_an_error_not_an_abort() {
        for bytes in [isize::MAX as usize - 100, usize::MAX, 1 << 60] {
            assert_eq!(HostMemory.alloc_zeroed(bytes).unwrap_err(), Error::OutOfMemory { bytes });
        }
    }
}
