//! Moving whole per-slot states between a caller's tensor and a pool's
//! buffers, in the caller's layout, for the fla-style functions (which take
//! and return states as tensors). Written over [`DeviceMemory`], so a device
//! pool stages through one host copy; no kernel code lives here.

use crate::errors::IntoPy;
use deltanet::{
    convert_conv, convert_state, ConvLayoutKind, DType, DeviceMemory, LayoutKind, MambaStatePool, Pool, Slot, StateLayout, StatePool,
};
use pyo3::PyResult;

/// Which per-slot buffer of layer 0.
#[derive(Clone, Copy)]
pub enum Part {
    /// Recurrent state; values given in this layout.
    Temporal(LayoutKind),
    /// Conv state; values given channels-first `[conv_dim, W-1]`.
    Conv,
}

fn encode(dtype: DType, vals: &[f32]) -> Vec<u8> {
    dtype.encode_vec(vals)
}

fn write_typed<M: DeviceMemory, L: StateLayout>(p: &mut StatePool<M, L>, part: Part, slots: &[Slot], vals: &[f32]) -> deltanet::Result<()> {
    let g = *p.geometry();
    let dims = g.config.dims;
    let mem = p.memory().clone();
    let parts = p.parts_mut();
    let (per, dtype) = match part {
        Part::Temporal(_) => (dims.state_elems(), g.config.state_dtype),
        Part::Conv => (dims.conv_elems(), g.config.conv_dtype),
    };
    let mut native = vec![0f32; per];
    for (i, s) in slots.iter().enumerate() {
        let src = &vals[i * per..(i + 1) * per];
        // The pool's own layout and dtype: one copy, no conversion or encoding pass (a conv
        // update stages its window on every decode step, so this is the common case too).
        match (part, dtype) {
            (Part::Temporal(from), DType::F32) if from == L::KIND => {
                mem.write(parts.temporal, g.temporal_offset(0, s.index()), bytemuck::cast_slice(src))?;
                continue;
            }
            (Part::Conv, DType::F32) if g.conv_layout == ConvLayoutKind::ChannelsFirst => {
                mem.write(parts.conv, g.conv_offset(0, s.index()), bytemuck::cast_slice(src))?;
                continue;
            }
            _ => {}
        }
        match part {
            Part::Temporal(from) => convert_state(from, L::KIND, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim, src, &mut native)?,
            Part::Conv => {
                convert_conv(ConvLayoutKind::ChannelsFirst, g.conv_layout, dims.conv_dim(), dims.conv_state_len(), src, &mut native)?
            }
        }
        let bytes = encode(dtype, &native);
        match part {
            Part::Temporal(_) => mem.write(parts.temporal, g.temporal_offset(0, s.index()), &bytes)?,
            Part::Conv => mem.write(parts.conv, g.conv_offset(0, s.index()), &bytes)?,
        }
    }
    Ok(())
}

fn read_typed<M: DeviceMemory, L: StateLayout>(p: &StatePool<M, L>, part: Part, slots: &[Slot]) -> deltanet::Result<Vec<f32>> {
    let g = *p.geometry();
    let dims = g.config.dims;
    let mem = p.memory();
    let (conv, temporal) = p.buffers();
    let (per, dtype) = match part {
        Part::Temporal(_) => (dims.state_elems(), g.config.state_dtype),
        Part::Conv => (dims.conv_elems(), g.config.conv_dtype),
    };
    let mut out = vec![0f32; per * slots.len()];
    let mut bytes = vec![0u8; per * dtype.size()];
    for (i, s) in slots.iter().enumerate() {
        if let (Part::Temporal(to), DType::F32) = (part, dtype) {
            if to == L::KIND {
                // The pool's own layout and dtype: one copy, no conversion pass.
                let dst = &mut out[i * per..(i + 1) * per];
                mem.read(temporal, g.temporal_offset(0, s.index()), bytemuck::cast_slice_mut(dst))?;
                continue;
            }
        }
        match part {
            Part::Temporal(_) => mem.read(temporal, g.temporal_offset(0, s.index()), &mut bytes)?,
            Part::Conv => mem.read(conv, g.conv_offset(0, s.index()), &mut bytes)?,
        }
        let native = dtype.decode_vec(&bytes);
        let dst = &mut out[i * per..(i + 1) * per];
        match part {
            Part::Temporal(to) => convert_state(L::KIND, to, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim, &native, dst)?,
            Part::Conv => convert_conv(g.conv_layout, ConvLayoutKind::ChannelsFirst, dims.conv_dim(), dims.conv_state_len(), &native, dst)?,
        }
    }
    Ok(out)
}

/// Runs `body` with `p` bound to the concrete pool of every kind this module
/// knows. `Pool` is `#[non_exhaustive]`: a pool kind added to the library
/// later is a typed [`deltanet::Error::Unsupported`] here until it is listed.
macro_rules! on_any_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            Pool::CpuKMajor($p) => $body,
            Pool::CpuVMajor($p) => $body,
            Pool::Cuda($p) => $body,
            Pool::Npu($p) => $body,
            other => Err(deltanet::Error::Unsupported {
                backend: other.backend_name().into(),
                reason: "the Python package cannot stage host values into this pool kind yet".into(),
            }),
        }
    };
}

/// Overwrites `part` of layer 0 of each slot from `vals` (`slots.len()` states, row-major).
pub fn write(pool: &mut Pool, part: Part, slots: &[Slot], vals: &[f32]) -> PyResult<()> {
    pool.as_dyn().check_slots(slots).py_err()?;
    on_any_pool!(pool, |p| write_typed(p, part, slots, vals)).py_err()
}

/// `part` of layer 0 of each slot, row-major.
pub fn read(pool: &Pool, part: Part, slots: &[Slot]) -> PyResult<Vec<f32>> {
    pool.as_dyn().check_slots(slots).py_err()?;
    on_any_pool!(pool, |p| read_typed(p, part, slots)).py_err()
}
