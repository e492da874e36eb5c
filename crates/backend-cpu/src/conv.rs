//! The short causal convolution (depthwise, width W, optional bias, SiLU) over
//! a block of channels, with its conv state (the last W-1 raw inputs,
//! channels-first), and the fused gate.

use crate::io::{In, Out, RawBuf};
use deltanet_core::DType;
use half::{bf16, f16};

/// Channels per conv task.
pub(crate) const CONV_BLOCK: usize = 512;

/// Loads `n` conv-state values of `dtype` at byte offset `off` of `buf`.
pub(crate) fn load_conv(buf: &RawBuf, dtype: DType, off: usize, out: &mut [f32]) {
    let n = out.len();
    match dtype {
        // SAFETY (all arms): `typed` bounds-checks the range; this task's
        // (slot, channel block) range is not written by anyone else meanwhile.
        DType::F32 => out.copy_from_slice(unsafe { std::slice::from_raw_parts(buf.typed::<f32>(off, n), n) }),
        DType::BF16 => {
            out.iter_mut().zip(unsafe { std::slice::from_raw_parts(buf.typed::<bf16>(off, n), n) }).for_each(|(o, x)| *o = x.to_f32())
        }
        DType::F16 => {
            out.iter_mut().zip(unsafe { std::slice::from_raw_parts(buf.typed::<f16>(off, n), n) }).for_each(|(o, x)| *o = x.to_f32())
        }
    }
}

/// Stores conv-state values as `dtype` at byte offset `off` of `buf`.
pub(crate) fn store_conv(buf: &RawBuf, dtype: DType, off: usize, vals: &[f32]) {
    let n = vals.len();
    match dtype {
        // SAFETY (all arms): `typed` bounds-checks the range; only this task
        // touches this (slot, channel block) range during the call.
        DType::F32 => unsafe { std::slice::from_raw_parts_mut(buf.typed::<f32>(off, n), n) }.copy_from_slice(vals),
        DType::BF16 => unsafe { std::slice::from_raw_parts_mut(buf.typed::<bf16>(off, n), n) }
            .iter_mut()
            .zip(vals)
            .for_each(|(o, &x)| *o = bf16::from_f32(x)),
        DType::F16 => unsafe { std::slice::from_raw_parts_mut(buf.typed::<f16>(off, n), n) }
            .iter_mut()
            .zip(vals)
            .for_each(|(o, &x)| *o = f16::from_f32(x)),
    }
}

/// The conv weights and bias of one channel block, and the views.
pub(crate) struct ConvBlock<'a> {
    /// First channel.
    pub c0: usize,
    /// Channels in the block.
    pub n: usize,
    /// Kernel width W.
    pub width: usize,
    /// Weights `[n, W]`, contiguous.
    pub w: Vec<f32>,
    /// Bias `[n]` (zeros without bias).
    pub bias: Vec<f32>,
    /// Raw inputs.
    pub x: In<'a>,
    /// Outputs.
    pub out: Out,
    /// One token's inputs / outputs.
    xr: Vec<f32>,
    yr: Vec<f32>,
}

impl<'a> ConvBlock<'a> {
    /// Loads the block's weights and bias.
    pub fn new(c0: usize, n: usize, width: usize, weight: &In<'_>, bias: Option<&In<'_>>, x: In<'a>, out: Out) -> Self {
        let mut w = vec![0.0; n * width];
        for c in 0..n {
            weight.row(weight.off2(c0 + c, 0), &mut w[c * width..(c + 1) * width]);
        }
        let mut b = vec![0.0; n];
        if let Some(bias) = bias {
            bias.row(c0 * bias.strides[0], &mut b);
        }
        ConvBlock { c0, n, width, w, bias: b, x, out, xr: vec![0.0; n], yr: vec![0.0; n] }
    }

    /// Convolves token `t` on `win` (`[n, W-1]` channels-first, oldest first),
    /// writes output row `t`, and shifts the token into `win`.
    pub fn step(&mut self, win: &mut [f32], t: usize) {
        let (wd, w1) = (self.width, self.width - 1);
        self.x.row(self.x.off2(t, self.c0), &mut self.xr);
        for c in 0..self.n {
            let wc = &self.w[c * wd..(c + 1) * wd];
            let hist = &mut win[c * w1..(c + 1) * w1];
            let xv = self.xr[c];
            let mut acc = self.bias[c];
            for j in 0..w1 {
                acc += wc[j] * hist[j];
            }
            acc += wc[w1] * xv;
            self.yr[c] = acc / (1.0 + (-acc).exp());
            hist.copy_within(1.., 0);
            hist[w1 - 1] = xv;
        }
        // SAFETY: (t, block) of the output belongs to this task alone.
        unsafe { self.out.store(self.out.off2(t, self.c0), &self.yr) };
    }
}

/// `g = -exp(A_log) * softplus(a + dt_bias)` (threshold 20), `beta = sigmoid(b)`, over `[T, HV]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate(a: &In<'_>, b: &In<'_>, a_log: &In<'_>, dt_bias: &In<'_>, g: &Out, beta: &Out, tokens: usize, hv: usize) {
    let mut al = vec![0.0; hv];
    let mut db = vec![0.0; hv];
    a_log.row(0, &mut al);
    dt_bias.row(0, &mut db);
    al.iter_mut().for_each(|x| *x = -x.exp());
    let (mut ar, mut br) = (vec![0.0; hv], vec![0.0; hv]);
    for t in 0..tokens {
        a.row(a.off2(t, 0), &mut ar);
        b.row(b.off2(t, 0), &mut br);
        for h in 0..hv {
            let x = ar[h] + db[h];
            let sp = if x > 20.0 { x } else { x.exp().ln_1p() };
            ar[h] = al[h] * sp;
            br[h] = 1.0 / (1.0 + (-br[h]).exp());
        }
        // SAFETY: single-threaded; row t of each output.
        unsafe {
            g.store(g.off2(t, 0), &ar);
            beta.store(beta.off2(t, 0), &br);
        }
    }
}
