//! [`NpuMemory`]: the pool's view of NPU memory. Copies and zeroing are
//! enqueued on the context's stream (ordered with every operator); host
//! transfers drain the stream first.

use crate::result::BACKEND;
use crate::safe::{DeviceBuffer, NpuContext};
use deltanet_core::memory::check_range;
use deltanet_core::{Device, DeviceMemory, Result};
use std::sync::Arc;

/// NPU memory on one device and stream.
#[derive(Clone, Debug)]
pub struct NpuMemory {
    ctx: Arc<NpuContext>,
}

impl NpuMemory {
    /// Memory on `ctx`'s device, ordered on its stream.
    pub fn new(ctx: Arc<NpuContext>) -> Self {
        NpuMemory { ctx }
    }
    /// The context.
    pub fn context(&self) -> &Arc<NpuContext> {
        &self.ctx
    }
}

impl DeviceMemory for NpuMemory {
    type Buffer = DeviceBuffer;

    fn device(&self) -> Device {
        Device::Npu(self.ctx.device())
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<DeviceBuffer> {
        let buf = self.ctx.alloc(bytes).map_err(|e| {
            // The same typed error as host memory, so a caller sizing a pool can tell "too big" from a fault.
            if e.is_out_of_memory() {
                deltanet_core::Error::OutOfMemory { bytes }
            } else {
                e.into()
            }
        })?;
        self.ctx.zero(buf.ptr(), bytes)?;
        Ok(buf)
    }
    fn len(&self, buf: &DeviceBuffer) -> usize {
        buf.len()
    }
    fn addr(&self, buf: &DeviceBuffer) -> u64 {
        buf.ptr()
    }
    fn copy_within(&self, buf: &mut DeviceBuffer, src: usize, dst: usize, bytes: usize) -> Result<()> {
        check_range(buf.len(), src, bytes)?;
        check_range(buf.len(), dst, bytes)?;
        if src < dst + bytes && dst < src + bytes && bytes > 0 {
            return Err(deltanet_core::Error::Device {
                backend: BACKEND.into(),
                op: "copy_within".into(),
                message: format!("overlapping ranges {src}+{bytes} and {dst}+{bytes}"),
            });
        }
        Ok(self.ctx.copy(buf.ptr() + dst as u64, buf.ptr() + src as u64, bytes)?)
    }
    fn copy_between(&self, src: &DeviceBuffer, src_off: usize, dst: &mut DeviceBuffer, dst_off: usize, bytes: usize) -> Result<()> {
        check_range(src.len(), src_off, bytes)?;
        check_range(dst.len(), dst_off, bytes)?;
        Ok(self.ctx.copy(dst.ptr() + dst_off as u64, src.ptr() + src_off as u64, bytes)?)
    }
    fn zero(&self, buf: &mut DeviceBuffer, off: usize, bytes: usize) -> Result<()> {
        check_range(buf.len(), off, bytes)?;
        Ok(self.ctx.zero(buf.ptr() + off as u64, bytes)?)
    }
    fn read(&self, buf: &DeviceBuffer, off: usize, dst: &mut [u8]) -> Result<()> {
        check_range(buf.len(), off, dst.len())?;
        self.ctx.synchronize()?;
        if !dst.is_empty() {
            self.ctx.api().memcpy_d2h(dst, buf.ptr() + off as u64)?;
        }
        Ok(())
    }
    fn write(&self, buf: &mut DeviceBuffer, off: usize, src: &[u8]) -> Result<()> {
        check_range(buf.len(), off, src.len())?;
        self.ctx.synchronize()?;
        if !src.is_empty() {
            self.ctx.api().memcpy_h2d(buf.ptr() + off as u64, src)?;
        }
        Ok(())
    }
}
