//! The short causal convolution (depthwise, width W, optional bias, SiLU) over
//! a block of channels, with its conv state (the last W-1 raw inputs,
//! channels-first).

use crate::io::{In, Out, RawBuf};
use crate::scratch::grow;
use crate::vmath;
use deltanet_core::DType;
use half::{bf16, f16};
use std::cell::RefCell;

/// Channels per conv task.
pub(crate) const CONV_BLOCK: usize = 2048;

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

/// Per-thread conv scratch, reused across calls (no allocation per call
/// once grown): the block's weights token-major, its bias, the input ring,
/// the channels-first window buffer and one output row.
#[derive(Default)]
pub(crate) struct ConvScratch {
    /// Weights `[W, n]`: row j multiplies the input j steps after the oldest.
    wt: Vec<f32>,
    /// The block's weights as given, channel-major `[n, W]`, widened to f32 (read in one pass, then transposed into `wt`).
    w_given: Vec<f32>,
    /// Bias `[n]` (zeros without bias).
    bias: Vec<f32>,
    /// The last W raw inputs `[W, n]`, a ring: row `head` is the oldest.
    ring: Vec<f32>,
    /// The conv state as stored, channels-first `[n, W-1]`.
    cf: Vec<f32>,
    /// One output row `[n]`.
    y: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<ConvScratch> = RefCell::new(ConvScratch::default());
}

/// One channel block of the conv with its inputs, outputs and window. The
/// window is kept token-major (a ring of W rows of `n` channels) so that one
/// token is a few vectorised passes over contiguous channels; the pool's
/// channels-first conv state is transposed only on load and store.
pub(crate) struct ConvBlock<'a, 's> {
    /// First channel.
    pub c0: usize,
    /// Channels in the block.
    pub n: usize,
    /// Kernel width W.
    width: usize,
    /// Raw inputs.
    x: In<'a>,
    /// Outputs.
    out: Out,
    s: &'s mut ConvScratch,
    /// Ring row of the oldest input.
    head: usize,
}

impl<'a> ConvBlock<'a, '_> {
    /// Runs `f` on the block `c0..c0 + n` with its weights and bias loaded
    /// into this thread's scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn with<R>(
        c0: usize,
        n: usize,
        width: usize,
        weight: &In<'_>,
        bias: Option<&In<'_>>,
        x: In<'a>,
        out: Out,
        f: impl FnOnce(&mut ConvBlock<'a, '_>) -> R,
    ) -> R {
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            grow(&mut s.wt, width * n);
            grow(&mut s.bias, n);
            grow(&mut s.ring, width * n);
            grow(&mut s.cf, (width - 1) * n);
            grow(&mut s.y, n);
            if weight.strides[0] == width && weight.strides[1] == 1 {
                // the usual contiguous `[conv_dim, W]`: one widening pass over the
                // block, then an f32 transpose (a per-element dtype dispatch
                // here was a third of a batch-1 decode layer's conv time)
                grow(&mut s.w_given, width * n);
                weight.row(c0 * width, &mut s.w_given[..width * n]);
                for (c, wc) in s.w_given[..width * n].chunks_exact(width).enumerate() {
                    for (j, &x) in wc.iter().enumerate() {
                        s.wt[j * n + c] = x;
                    }
                }
            } else {
                for c in 0..n {
                    for j in 0..width {
                        s.wt[j * n + c] = weight.get(weight.off2(c0 + c, j));
                    }
                }
            }
            match bias {
                Some(b) => b.row(c0 * b.strides[0], &mut s.bias[..n]),
                None => s.bias[..n].fill(0.0),
            }
            f(&mut ConvBlock { c0, n, width, x, out, s, head: 0 })
        })
    }

    /// Starts from a zero window (a sequence without initial state).
    pub fn clear(&mut self) {
        self.head = 0;
        self.s.ring[..self.width * self.n].fill(0.0);
    }

    /// Starts from the conv state of `dtype` at byte offset `off` of `buf`
    /// (channels-first `[n, W-1]`, oldest first).
    pub fn load(&mut self, buf: &RawBuf, dtype: DType, off: usize) {
        let (n, w1) = (self.n, self.width - 1);
        load_conv(buf, dtype, off, &mut self.s.cf[..n * w1]);
        self.head = 0;
        for c in 0..n {
            for j in 0..w1 {
                self.s.ring[j * n + c] = self.s.cf[c * w1 + j];
            }
        }
    }

    /// Stores the window (the last W-1 inputs) as a conv state of `dtype` at
    /// byte offset `off` of `buf`.
    pub fn store(&mut self, buf: &RawBuf, dtype: DType, off: usize) {
        let (n, w, w1) = (self.n, self.width, self.width - 1);
        for j in 0..w1 {
            let r = (self.head + j) % w;
            for c in 0..n {
                self.s.cf[c * w1 + j] = self.s.ring[r * n + c];
            }
        }
        store_conv(buf, dtype, off, &self.s.cf[..n * w1]);
    }

    /// One token `t` on the conv state of `dtype` at byte offset `off` of
    /// `buf`, updated where it lies (a decode): for an f32 state, no window
    /// transpose and no copy of the state; the same bits as [`Self::load`],
    /// [`Self::step`], [`Self::store`], which other dtypes take.
    pub fn update_in_place(&mut self, buf: &RawBuf, dtype: DType, off: usize, t: usize) {
        let (n, w) = (self.n, self.width);
        if dtype != DType::F32 || w < 2 {
            self.load(buf, dtype, off);
            self.step(t);
            return self.store(buf, dtype, off);
        }
        // SAFETY: `typed` bounds-checks the range; this task's (slot, channel block) alone.
        let st = unsafe { std::slice::from_raw_parts_mut(buf.typed::<f32>(off, n * (w - 1)), n * (w - 1)) };
        self.update_rows(st, w - 1, t);
    }

    /// One token `t` on this block's rows of a caller's f32 conv state
    /// `[n, s_len]` (`s_len >= W-1` raw inputs per channel, oldest first, as
    /// causal-conv1d and transformers keep it): convolves the newest W-1 with
    /// the token, shifts every row left by one and appends the token. The same
    /// bits as [`Self::update_in_place`].
    pub fn update_rows(&mut self, st: &mut [f32], s_len: usize, t: usize) {
        let (n, w) = (self.n, self.width);
        let s = &mut *self.s;
        self.x.row(self.x.off2(t, self.c0), &mut s.ring[..n]);
        conv_update_row(&s.wt[..w * n], &s.bias[..n], &mut st[..n * s_len], s_len, &s.ring[..n], w, &mut s.y[..n]);
        // SAFETY: (t, block) of the output belongs to this task alone.
        unsafe { self.out.store(self.out.off2(t, self.c0), &s.y[..n]) };
    }

    /// Stores input row `t` of the block's channels as `dtype` at byte offset
    /// `off` of `buf` (a replay verify's record of a draft's raw input): the
    /// value a conv state holds once the token has been shifted into it.
    pub fn store_input(&mut self, t: usize, buf: &RawBuf, dtype: DType, off: usize) {
        let n = self.n;
        self.x.row(self.x.off2(t, self.c0), &mut self.s.y[..n]);
        store_conv(buf, dtype, off, &self.s.y[..n]);
    }

    /// Convolves token `t` (reading input row `t`, writing output row `t`)
    /// and shifts it into the window.
    pub fn step(&mut self, t: usize) {
        let (n, w) = (self.n, self.width);
        let s = &mut *self.s;
        // the newest input goes into the row after the W-1 held ones
        let newest = (self.head + w - 1) % w;
        // rows are a whole conv_dim apart: the hardware prefetcher does not follow
        self.x.prefetch(self.x.off2(t + 2, self.c0), n);
        self.x.row(self.x.off2(t, self.c0), &mut s.ring[newest * n..(newest + 1) * n]);
        conv_row(&s.wt[..w * n], &s.bias[..n], &s.ring[..w * n], self.head, w, &mut s.y[..n]);
        self.head = (self.head + 1) % w;
        // SAFETY: (t, block) of the output belongs to this task alone.
        unsafe { self.out.store(self.out.off2(t, self.c0), &s.y[..n]) };
    }
}

// `y = silu(bias + sum_j wt[j] * ring[(head + j) % W])` over the block's
// channels, oldest input first, fused multiply-adds (the same bits on every
// machine path: see `vmath`).
vmath::dispatch!(
    fn conv_row(wt: &[f32], bias: &[f32], ring: &[f32], head: usize, w: usize, y: &mut [f32]) {
        let n = y.len();
        y.copy_from_slice(&bias[..n]);
        for j in 0..w {
            let r = (head + j) % w;
            let (wj, xj) = (&wt[j * n..(j + 1) * n], &ring[r * n..(r + 1) * n]);
            for ((y, &a), &x) in y.iter_mut().zip(wj).zip(xj) {
                *y = a.mul_add(x, *y);
            }
        }
        y.iter_mut().for_each(|v| *v = vmath::silu_lane(*v));
    }
);

// The decode form of `conv_row` on a channels-first f32 state `[n, s_len]`
// (oldest first; the newest W-1 columns are the window, `s_len >= W-1`),
// shifted in place: the same fused multiply-adds in the same order (oldest
// input first), so the same bits.
vmath::dispatch!(
    fn conv_update_row(wt: &[f32], bias: &[f32], st: &mut [f32], s_len: usize, x: &[f32], w: usize, y: &mut [f32]) {
        let (n, w1) = (y.len(), w - 1);
        // The models' width (W = 4), unrolled (no per-channel shift loop), on the
        // pool's state (S = 3) and on transformers' (S = 4).
        #[inline(always)]
        fn width4<const S: usize>(wt: &[f32], bias: &[f32], st: &mut [f32], x: &[f32], y: &mut [f32]) {
            let n = y.len();
            let (w0, w1, w2, w3) = (&wt[..n], &wt[n..2 * n], &wt[2 * n..3 * n], &wt[3 * n..4 * n]);
            for (c, (s, yc)) in st.chunks_exact_mut(S).zip(y.iter_mut()).enumerate().take(n) {
                let s: &mut [f32; S] = s.try_into().expect("S columns");
                let (s0, s1, s2, xc) = (s[S - 3], s[S - 2], s[S - 1], x[c]);
                let acc = w0[c].mul_add(s0, bias[c]);
                let acc = w1[c].mul_add(s1, acc);
                let acc = w2[c].mul_add(s2, acc);
                *yc = w3[c].mul_add(xc, acc);
                s.copy_within(1.., 0);
                s[S - 1] = xc;
            }
        }
        match (w1, s_len) {
            (3, 3) => width4::<3>(wt, bias, st, x, y),
            (3, 4) => width4::<4>(wt, bias, st, x, y),
            _ => {
                let skip = s_len - w1; // older inputs the state keeps but the conv does not read
                for (c, (s, yc)) in st.chunks_exact_mut(s_len).zip(y.iter_mut()).enumerate().take(n) {
                    let mut acc = bias[c];
                    for j in 0..w1 {
                        acc = wt[j * n + c].mul_add(s[skip + j], acc);
                    }
                    *yc = wt[w1 * n + c].mul_add(x[c], acc);
                    s.copy_within(1.., 0);
                    s[s_len - 1] = x[c];
                }
            }
        }
        y.iter_mut().for_each(|v| *v = vmath::silu_lane(*v));
    }
);
