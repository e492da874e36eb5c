//! The opt-in check for non-finite inputs ([`PoolConfig::with_finite_check`]).
//!
//! What a non-finite value does without the check: the delta rule is causal,
//! so a NaN or infinity in q, k, v, g or beta at token `t` of a sequence (or
//! one that arises there, e.g. from a large positive g) makes that token's
//! output and every later output and state of the sequence non-finite, and the
//! slot's state is written back non-finite (a NaN in q alone spoils only token
//! `t`'s output). Outputs of tokens before `t`, and every other sequence of
//! the batch, stay as they would be without it, in the chunked extend as in
//! decode. A slot whose state is non-finite stays so until it is zeroed or
//! overwritten.
//!
//! With the check on, every delta-rule kernel and the layer forward first scan
//! their inputs (and the states they start from) and refuse the call with
//! [`Error::NonFinite`], naming the first sequence and token, before any
//! state is written. The check reads host memory: device backends refuse a
//! pool that asks for it.
//!
//! [`PoolConfig::with_finite_check`]: crate::PoolConfig::with_finite_check

use crate::access::KernelAccess;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::forward::LayerInput;
use crate::kernel_io::DeltaIo;
use crate::layout::StateLayout;
use crate::memory::DeviceMemory;
use crate::pool::{MambaStatePool, StatePool};
use crate::tensor::TensorRef;
use half::{bf16, f16};

/// Sequence of packed token `packed` and its position in that sequence.
fn locate(access: &KernelAccess<'_>, packed: usize) -> (usize, usize) {
    match access {
        KernelAccess::Extend(b) => {
            let seq = b.cu_seqlens().partition_point(|&c| c <= packed) - 1;
            (seq, packed - b.cu_seqlens()[seq])
        }
        KernelAccess::Verify(b) | KernelAccess::ConvVerify(b) => (packed / b.draft(), packed % b.draft()),
        KernelAccess::Decode(_) | KernelAccess::Commit(_) => (packed, 0),
    }
}

/// The first packed token whose row of `t` (`[T, ...]`, validated) holds a non-finite value.
fn first_non_finite(t: &TensorRef<'_>) -> Result<Option<usize>> {
    let m = t.meta();
    let (shape, strides) = (m.shape(), m.strides());
    let inner: Vec<usize> = shape[1..].to_vec();
    let per_row: usize = inner.iter().product();
    let finite_at = |off: usize| -> Result<bool> {
        Ok(match m.dtype() {
            DType::F32 => t.host_slice::<f32>()?[off].is_finite(),
            DType::BF16 => t.host_slice::<bf16>()?[off].is_finite(),
            DType::F16 => t.host_slice::<f16>()?[off].is_finite(),
        })
    };
    for row in 0..shape[0] {
        for lin in 0..per_row {
            // the inner index of element `lin` of the row, in row-major order
            let (mut rest, mut off) = (lin, row * strides[0]);
            for d in (1..shape.len()).rev() {
                off += (rest % shape[d]) * strides[d];
                rest /= shape[d];
            }
            if !finite_at(off)? {
                return Ok(Some(row));
            }
        }
    }
    Ok(None)
}

/// Refuses the call if any of `tensors` holds a non-finite value, naming the
/// earliest packed token (ties: the tensor listed first).
fn check_tensors(access: &KernelAccess<'_>, tensors: &[(&str, &TensorRef<'_>)]) -> Result<()> {
    let mut first: Option<(usize, &str)> = None;
    for (name, t) in tensors {
        if let Some(p) = first_non_finite(t)? {
            if first.is_none_or(|(q, _)| p < q) {
                first = Some((p, name));
            }
        }
    }
    match first {
        None => Ok(()),
        Some((packed, name)) => {
            let (seq, token) = locate(access, packed);
            Err(Error::NonFinite { seq, token, what: format!("input `{name}`") })
        }
    }
}

/// The recurrent states the call starts from: every slot's, except extend
/// sequences without `has_initial_state`.
fn check_states<M: DeviceMemory, L: StateLayout>(pool: &StatePool<M, L>, layer: usize, access: &KernelAccess<'_>) -> Result<()> {
    let g = pool.geometry();
    g.check_layer(layer)?;
    let slots = match access {
        KernelAccess::Extend(b) => b.slots().iter().zip(b.has_initial_state()).map(|(&s, &init)| init.then_some(s)).collect(),
        KernelAccess::Decode(b) => b.slots().iter().map(|&s| Some(s)).collect(),
        KernelAccess::Verify(b) | KernelAccess::ConvVerify(b) => b.slots().iter().map(|&s| Some(s)).collect(),
        KernelAccess::Commit(_) => Vec::new(),
    };
    let mut raw = vec![0u8; g.state_bytes()];
    for (seq, slot) in slots.into_iter().enumerate() {
        let Some(slot) = slot else { continue };
        pool.memory().read(pool.buffers().1, g.temporal_offset(layer, slot.index()), &mut raw)?;
        if g.config.state_dtype.decode_vec(&raw).iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                seq,
                token: 0,
                what: format!("recurrent state of slot {} (before the first token)", slot.index()),
            });
        }
    }
    Ok(())
}

/// The delta rule's check: with the pool's finite check on, refuses a call
/// whose inputs or starting states hold a non-finite value. Part of every
/// extend, decode and verify's validation ([`crate::checked`]), after the
/// batch and `io` were checked, before anything is written.
pub(crate) fn check_delta<M: DeviceMemory, L: StateLayout>(
    pool: &StatePool<M, L>,
    layer: usize,
    access: KernelAccess<'_>,
    io: &DeltaIo<'_>,
) -> Result<()> {
    if !pool.geometry().config.check_finite {
        return Ok(());
    }
    check_states(pool, layer, &access)?;
    check_tensors(&access, &[("q", &io.q), ("k", &io.k), ("v", &io.v), ("g", &io.g), ("beta", &io.beta)])
}

/// The layer forward's check, before the conv writes anything: its raw
/// inputs and the recurrent states the delta rule will start from.
pub(crate) fn check_layer<M: DeviceMemory, L: StateLayout>(
    pool: &StatePool<M, L>,
    layer: usize,
    access: KernelAccess<'_>,
    x: &LayerInput<'_>,
) -> Result<()> {
    if !pool.geometry().config.check_finite {
        return Ok(());
    }
    check_states(pool, layer, &access)?;
    check_tensors(&access, &[("mixed_qkv", &x.mixed_qkv), ("a", &x.a), ("b", &x.b)])
}

/// A no-op unless the pool checks finiteness; kept apart so the device check
/// happens once, at pool creation.
pub(crate) fn check_pool_supports(device_is_host: bool, check_finite: bool, backend: &str) -> Result<()> {
    if check_finite && !device_is_host {
        return Err(Error::Unsupported {
            backend: backend.to_string(),
            reason: "the non-finite input check reads host memory; this backend's tensors are on a device".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capabilities, DecodeBatch, ExtendBatch, HostMemory, KMajor, LayoutKind, ModelDims, PoolConfig};

    #[test]
    fn locates_the_first_non_finite_token_of_a_strided_view() {
        let dims = ModelDims::new(1, 1, 2, 2, 2).unwrap();
        let caps = Capabilities::host_reference(LayoutKind::KMajor);
        let pool: StatePool<HostMemory, KMajor> = StatePool::new(HostMemory, PoolConfig::new(1, 3, dims), &caps).unwrap();
        let s = pool.alloc(2).unwrap();
        let eb = ExtendBatch::new(&pool, &[0, 3, 5], &s, &[false, false]).unwrap();
        // [5, 2] view with row stride 3: element (3, 1) sits at 10; the gaps may hold anything
        let mut data = vec![0.5f32; 15];
        data[2] = f32::NAN;
        data[10] = f32::INFINITY;
        let meta = crate::TensorMeta::strided(crate::Device::Host, DType::F32, &[5, 2], &[3, 1]).unwrap();
        let t = TensorRef::strided(&data, 0, meta).unwrap();
        assert_eq!(first_non_finite(&t).unwrap(), Some(3));
        let e = check_tensors(&KernelAccess::Extend(&eb), &[("v", &t)]).unwrap_err();
        assert_eq!(e, Error::NonFinite { seq: 1, token: 0, what: "input `v`".into() });
        let db = DecodeBatch::new(&pool, &s).unwrap();
        assert_eq!(locate(&KernelAccess::Decode(&db), 1), (1, 0));
    }
}
