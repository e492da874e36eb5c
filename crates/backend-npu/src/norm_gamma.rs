//! The constant `gamma` that turns `aclnnRmsNorm` into the q/k L2 norm, on
//! the device once per head size and dtype.
//!
//! `x / sqrt(sum(x^2) + eps)` over `K` elements equals
//! `x / sqrt(mean(x^2) + eps/K) * K^-0.5`: an RMS norm with epsilon `eps/K`
//! and every `gamma` element `K^-0.5`. The operator takes `gamma` in the
//! dtype of `x` (bf16 here), so `K^-0.5` is rounded to it: exact when `K` is
//! a power of 4, else within bf16's half-ulp (2^-9 relative, below the
//! rounding of the bf16 output itself).

use crate::safe::{DeviceBuffer, NpuContext, Staging};
use crate::view::View;
use deltanet_core::{DType, Result};
use std::sync::Mutex;

/// One uploaded `gamma`.
struct Gamma {
    k: usize,
    dtype: DType,
    /// The page-locked source of its one upload, kept (never rewritten) until
    /// the dispatcher goes, so the copy may still be queued when `get` returns.
    _staging: Staging,
    device: DeviceBuffer,
}

/// Every `gamma` a dispatcher has used, by head size and dtype: the first
/// operation of a (K, dtype) allocates and uploads it (asynchronously), every
/// later one reuses it.
#[derive(Default)]
pub(crate) struct NormGammas {
    cached: Mutex<Vec<Gamma>>,
}

impl NormGammas {
    /// The `[K]` gamma of dtype `dtype` (K^-0.5 in every element).
    pub(crate) fn get(&self, ctx: &NpuContext, k: usize, dtype: DType) -> Result<View> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let at = match cached.iter().position(|g| g.k == k && g.dtype == dtype) {
            Some(i) => i,
            None => {
                let bytes = dtype.encode_vec(&vec![(k as f32).powf(-0.5); k]);
                let mut staging = Staging::new(ctx, bytes.len())?;
                staging.bytes_mut()?[..bytes.len()].copy_from_slice(&bytes);
                let device = ctx.alloc(bytes.len())?;
                staging.upload(ctx, device.ptr(), bytes.len())?;
                cached.push(Gamma { k, dtype, _staging: staging, device });
                cached.len() - 1
            }
        };
        Ok(View::contiguous(&cached[at].device, dtype.into(), &[k]))
    }
}
