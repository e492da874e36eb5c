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
    /// Weights `[W, n]`: row j multiplies the input j steps after the oldest
    /// (made from `w_given` when a call first steps a token-major window).
    wt: Vec<f32>,
    /// The block's weights as given, channel-major `[n, W]`, widened to f32
    /// (unless they are read where they lie).
    w_given: Vec<f32>,
    /// Bias `[n]` (zeros without bias).
    bias: Vec<f32>,
    /// The last W raw inputs `[W, n]`, a ring: row `head` is the oldest (a
    /// row the input lends, see `ConvBlock::lent`, is read there, not here).
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
    /// The block's weights where they lie (contiguous f32), else `None` and
    /// they are in `s.w_given`.
    wc: Option<&'a [f32]>,
    s: &'s mut ConvScratch,
    /// Ring row of the oldest input.
    head: usize,
    /// For W = 4 and f32 inputs: ring row `r` is lent by the input (its row
    /// there, `Some`) instead of copied into the ring (an extend copied every
    /// input row: 18% of its conv time in memmove).
    lent: [Option<&'a [f32]>; 4],
    /// Whether `s.wt` holds this block's weights (see [`Self::ready_wt`]).
    wt_ready: bool,
}

impl<'a> ConvBlock<'a, '_> {
    /// Runs `f` on the block `c0..c0 + n` with its weights and bias loaded
    /// into this thread's scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn with<R>(
        c0: usize,
        n: usize,
        width: usize,
        weight: &In<'a>,
        bias: Option<&In<'_>>,
        x: In<'a>,
        out: Out,
        f: impl FnOnce(&mut ConvBlock<'a, '_>) -> R,
    ) -> R {
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            grow(&mut s.w_given, width * n);
            grow(&mut s.bias, n);
            grow(&mut s.ring, width * n);
            grow(&mut s.cf, (width - 1) * n);
            grow(&mut s.y, n);
            let contiguous = weight.strides[0] == width && weight.strides[1] == 1;
            // the usual contiguous f32 `[conv_dim, W]` is read where it lies
            let wc = if contiguous { weight.f32_row(c0 * width, width * n) } else { None };
            match (wc, contiguous) {
                (Some(_), _) => {}
                // one widening pass over the block (a per-element dtype dispatch
                // here was a third of a batch-1 decode layer's conv time)
                (None, true) => weight.row(c0 * width, &mut s.w_given[..width * n]),
                (None, false) => {
                    for c in 0..n {
                        for j in 0..width {
                            s.w_given[c * width + j] = weight.get(weight.off2(c0 + c, j));
                        }
                    }
                }
            }
            match bias {
                Some(b) => b.row(c0 * b.strides[0], &mut s.bias[..n]),
                None => s.bias[..n].fill(0.0),
            }
            f(&mut ConvBlock { c0, n, width, x, out, wc, s, head: 0, lent: [None; 4], wt_ready: false })
        })
    }

    /// Transposes the block's weights into `wt` (token-major `[W, n]`) the
    /// first time a token-major step needs them: a decode's f32 update reads
    /// the channel-major weights as given and never pays for the transpose.
    fn ready_wt(&mut self) {
        if self.wt_ready {
            return;
        }
        let (n, w) = (self.n, self.width);
        let s = &mut *self.s;
        grow(&mut s.wt, w * n);
        to_token_major(self.wc.unwrap_or(&s.w_given[..w * n]), w, &mut s.wt[..w * n]);
        self.wt_ready = true;
    }

    /// Starts from a zero window (a sequence without initial state).
    pub fn clear(&mut self) {
        self.head = 0;
        self.lent = [None; 4];
        self.s.ring[..self.width * self.n].fill(0.0);
    }

    /// Starts from the conv state of `dtype` at byte offset `off` of `buf`
    /// (channels-first `[n, W-1]`, oldest first).
    pub fn load(&mut self, buf: &RawBuf, dtype: DType, off: usize) {
        let (n, w1) = (self.n, self.width - 1);
        load_conv(buf, dtype, off, &mut self.s.cf[..n * w1]);
        self.head = 0;
        self.lent = [None; 4];
        // ring rows 0..W-1 (oldest first) = the state's columns
        to_token_major(&self.s.cf[..n * w1], w1, &mut self.s.ring[..w1 * n]);
    }

    /// Stores the window (the last W-1 inputs) as a conv state of `dtype` at
    /// byte offset `off` of `buf`.
    pub fn store(&mut self, buf: &RawBuf, dtype: DType, off: usize) {
        let (n, w, w1) = (self.n, self.width, self.width - 1);
        let s = &mut *self.s;
        if w1 == 3 {
            let row = |j: usize| window_row(&s.ring, &self.lent, n, (self.head + j) % w);
            interleave3(row(0), row(1), row(2), &mut s.cf[..3 * n]);
        } else {
            for j in 0..w1 {
                let r = (self.head + j) % w;
                for c in 0..n {
                    s.cf[c * w1 + j] = s.ring[r * n + c];
                }
            }
        }
        store_conv(buf, dtype, off, &s.cf[..n * w1]);
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
        self.update_rows(st, w - 1, t, std::ptr::null());
    }

    /// One token `t` on this block's rows of a caller's f32 conv state
    /// `[n, s_len]` (`s_len >= W-1` raw inputs per channel, oldest first, as
    /// causal-conv1d and transformers keep it): convolves the newest W-1 with
    /// the token, shifts every row left by one and appends the token. The same
    /// bits as [`Self::update_in_place`]. `next` (null: none) is the state the
    /// caller updates next, `[n, s_len]` too: prefetched, never read.
    pub fn update_rows(&mut self, st: &mut [f32], s_len: usize, t: usize, next: *const f32) {
        let (n, w) = (self.n, self.width);
        let s = &mut *self.s;
        let st = &mut st[..n * s_len];
        // f32 input and output rows are read and written where they lie
        let xo = self.x.off2(t, self.c0);
        let x = match self.x.f32_row(xo, n) {
            Some(x) => x,
            None => {
                self.x.row(xo, &mut s.ring[..n]);
                &s.ring[..n]
            }
        };
        let oo = self.out.off2(t, self.c0);
        let wc = self.wc.unwrap_or(&s.w_given[..w * n]);
        // SAFETY: (t, block) of the output belongs to this task alone.
        unsafe { self.out.write_row(oo, &mut s.y[..n], |y| conv_update(wc, &s.bias[..n], st, s_len, x, w, y, next)) };
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
        self.ready_wt();
        let (n, w) = (self.n, self.width);
        let s = &mut *self.s;
        // the newest input goes into the row after the W-1 held ones
        let newest = (self.head + w - 1) % w;
        // rows are a whole conv_dim apart: the hardware prefetcher does not follow
        self.x.prefetch(self.x.off2(t + 2, self.c0), n);
        let xo = self.x.off2(t, self.c0);
        let oo = self.out.off2(t, self.c0);
        if w == 4 {
            // an f32 input row is read where it lies (lent to the window), any
            // other is widened into the ring
            self.lent[newest] = self.x.f32_row(xo, n);
            if self.lent[newest].is_none() {
                self.x.row(xo, &mut s.ring[newest * n..(newest + 1) * n]);
            }
            let row = |j: usize| window_row(&s.ring, &self.lent, n, (self.head + j) % 4);
            let rows = [row(0), row(1), row(2), row(3)];
            let (wt, bias) = (&s.wt[..4 * n], &s.bias[..n]);
            // SAFETY: (t, block) of the output belongs to this task alone.
            unsafe { self.out.write_row(oo, &mut s.y[..n], |y| conv_row4(wt, bias, rows, y)) };
        } else {
            self.x.row(xo, &mut s.ring[newest * n..(newest + 1) * n]);
            let (wt, bias, ring) = (&s.wt[..w * n], &s.bias[..n], &s.ring[..w * n]);
            // SAFETY: (t, block) of the output belongs to this task alone.
            unsafe { self.out.write_row(oo, &mut s.y[..n], |y| conv_row(wt, bias, ring, self.head, w, y)) };
        }
        self.head = (self.head + 1) % w;
    }
}

// `y = silu(bias + sum_j wt[j] * ring[(head + j) % W])` over the block's
// channels, oldest input first, fused multiply-adds (the same bits on every
// machine path: see `vmath`); the models' W = 4 takes [`conv_row4`].
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

/// Ring row `r` of a window: the input's row where the input lent it, else the ring's.
fn window_row<'r>(ring: &'r [f32], lent: &[Option<&'r [f32]>; 4], n: usize, r: usize) -> &'r [f32] {
    lent.get(r).copied().flatten().unwrap_or(&ring[r * n..(r + 1) * n])
}

// [`conv_row`] for W = 4 (one pass: a pass per weight row read and wrote `y`
// four times) with the window's rows given oldest first, some read where the
// input holds them: the same fused multiply-adds in the same order.
vmath::dispatch!(
    fn conv_row4(wt: &[f32], bias: &[f32], rows: [&[f32]; 4], y: &mut [f32]) {
        let n = y.len();
        let (w0, w1, w2, w3) = (&wt[..n], &wt[n..2 * n], &wt[2 * n..3 * n], &wt[3 * n..4 * n]);
        let (x0, x1, x2, x3, bias) = (&rows[0][..n], &rows[1][..n], &rows[2][..n], &rows[3][..n], &bias[..n]);
        for c in 0..n {
            let acc = w0[c].mul_add(x0[c], bias[c]);
            let acc = w1[c].mul_add(x1[c], acc);
            let acc = w2[c].mul_add(x2[c], acc);
            y[c] = vmath::silu_lane(w3[c].mul_add(x3[c], acc));
        }
    }
);

// `wt[j * n + c] = wc[c * w + j]`: channel-major `[n, w]` to token-major
// `[w, n]` (the weights, and a conv state of `w = W-1` columns into the ring).
vmath::dispatch!(
    fn to_token_major(wc: &[f32], w: usize, wt: &mut [f32]) {
        let n = wt.len() / w;
        // the models' widths (W = 4 weights, W-1 = 3 state columns): one
        // vectorised pass each (a scalar scatter was a fifth of a decode's conv)
        if w == 4 {
            let (t0, rest) = wt.split_at_mut(n);
            let (t1, rest) = rest.split_at_mut(n);
            let (t2, t3) = rest.split_at_mut(n);
            for ((((c, a), b), d), e) in wc[..4 * n].chunks_exact(4).zip(t0).zip(t1).zip(t2).zip(&mut t3[..n]) {
                (*a, *b, *d, *e) = (c[0], c[1], c[2], c[3]);
            }
            return;
        }
        if w == 3 {
            let (t0, rest) = wt.split_at_mut(n);
            let (t1, t2) = rest.split_at_mut(n);
            for (((c, a), b), d) in wc[..3 * n].chunks_exact(3).zip(t0).zip(t1).zip(&mut t2[..n]) {
                (*a, *b, *d) = (c[0], c[1], c[2]);
            }
            return;
        }
        for (c, wcc) in wc[..w * n].chunks_exact(w).enumerate() {
            for (j, &x) in wcc.iter().enumerate() {
                wt[j * n + c] = x;
            }
        }
    }
);

// `cf[3c + j] = rj[c]`: three token-major rows to a channels-first conv state `[n, 3]`.
vmath::dispatch!(
    fn interleave3(r0: &[f32], r1: &[f32], r2: &[f32], cf: &mut [f32]) {
        let n = cf.len() / 3;
        for (((c, &a), &b), &d) in cf.chunks_exact_mut(3).zip(&r0[..n]).zip(&r1[..n]).zip(&r2[..n]) {
            (c[0], c[1], c[2]) = (a, b, d);
        }
    }
);

/// [`conv_update_row`], through an AVX2 kernel where one fits (W = 4 on a
/// machine with AVX2 and FMA): the pool's state (`s_len` = 3) through
/// [`update_s3_avx2`], transformers' (`s_len` = 4) through
/// [`update_s4_avx2`]; both read the channel-major weights `wc` as given. The
/// same bits on every path. `next` (null: none) is the `[n, 4]` state updated
/// after this one, which the S = 4 kernel prefetches (the others do not).
#[allow(clippy::too_many_arguments)]
fn conv_update(wc: &[f32], bias: &[f32], st: &mut [f32], s_len: usize, x: &[f32], w: usize, y: &mut [f32], next: *const f32) {
    #[cfg(target_arch = "x86_64")]
    if w == 4 && (s_len == 3 || s_len == 4) && crate::simd::has_avx2() {
        let n = y.len();
        // SAFETY: AVX2 and FMA checked above; `next` is only prefetched.
        let done = unsafe {
            match s_len {
                3 => update_s3_avx2(wc, bias, st, x, y),
                _ => update_s4_avx2(wc, bias, st, x, y, next),
            }
        };
        vmath::silu_in_place(&mut y[..done]);
        let (st, wc) = (&mut st[s_len * done..s_len * n], &wc[4 * done..4 * n]);
        return conv_update_row(wc, &bias[done..n], st, s_len, &x[done..n], 4, &mut y[done..]);
    }
    let _ = next;
    conv_update_row(wc, bias, st, s_len, x, w, y)
}

/// The weights of 8 channels, channel-major at `wp` (`[8, 4]`, as given), as
/// four registers: tap j of the 8 channels, in channel order, in register j.
/// Channels i and 4 + i go into the halves of one register, then a 4x4
/// transpose in each 128-bit half (unpack pairs channels, shuffle pairs
/// pairs): a per-call token-major copy of the weights cost a decode's conv
/// more than its kernel saved.
///
/// # Safety
/// The CPU has AVX2; `wp` points to 32 readable f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn taps8(wp: *const f32) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    // SAFETY: the caller's: 32 f32 from `wp`.
    unsafe {
        let a = |i: usize| _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(_mm_loadu_ps(wp.add(4 * i))), _mm_loadu_ps(wp.add(16 + 4 * i)));
        let (a0, a1, a2, a3) = (a(0), a(1), a(2), a(3));
        let (lo01, hi01) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
        let (lo23, hi23) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
        [
            _mm256_shuffle_ps::<0x44>(lo01, lo23),
            _mm256_shuffle_ps::<0xEE>(lo01, lo23),
            _mm256_shuffle_ps::<0x44>(hi01, hi23),
            _mm256_shuffle_ps::<0xEE>(hi01, hi23),
        ]
    }
}

/// The decode update of transformers' conv state (W = 4, `[n, 4]` per block,
/// oldest first) before SiLU, 8 channels at a time: the state's 8 rows are
/// one 4x4 transpose per 128-bit lane (columns come out in channel order
/// 0 2 4 6 1 3 5 7, permuted to 0..7 for the arithmetic), convolved with the
/// same fused multiply-adds in the same order as [`conv_update_row`] (bias,
/// then oldest first), and the shifted rows go back through the inverse
/// transpose. The compiler's code for the interleaved `[n, 4]` rows spent
/// ~50 cycles per 8 channels de-interleaving them. The same 8 channels of
/// `next` (the state updated after this one; null: none) are prefetched into
/// L2 as these are done, one state ahead: transformers' states are cold from
/// memory at every layer step. Returns the channels done (a multiple of 8);
/// the rest is the caller's.
///
/// # Safety
/// The CPU has AVX2 and FMA. `next` is null or the start of `4 * y.len()`
/// f32 (only prefetched, never read).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_s4_avx2(wc: &[f32], bias: &[f32], st: &mut [f32], x: &[f32], y: &mut [f32], next: *const f32) -> usize {
    use std::arch::x86_64::*;
    let n = y.len();
    let done = n / 8 * 8;
    let (wc, bias, st, x) = (&wc[..4 * n], &bias[..n], &mut st[..4 * n], &x[..n]);
    let to_channels = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let to_lanes = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for c in (0..done).step_by(8) {
        if !next.is_null() {
            // the two lines of `next` this step's channels read there; written out, not
            // `simd::Prefetch` (whose per-step loop cost ~5% of this loop, measured)
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(4 * c) as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(4 * c + 16) as *const i8);
        }
        // SAFETY: c + 8 <= n: channels c..c+8 of every slice checked above
        // (state rows and weights 4c..4c+32); unaligned accesses.
        unsafe {
            let tap = taps8(wc.as_ptr().add(4 * c));
            let sp = st.as_mut_ptr().add(4 * c);
            let (r0, r1, r2, r3) =
                (_mm256_loadu_ps(sp), _mm256_loadu_ps(sp.add(8)), _mm256_loadu_ps(sp.add(16)), _mm256_loadu_ps(sp.add(24)));
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            // state columns 1..3 (column 0, the oldest, leaves the window), lane order
            let c1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let c2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let c3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let xv = _mm256_loadu_ps(x.as_ptr().add(c));
            let acc = _mm256_fmadd_ps(tap[0], _mm256_permutevar8x32_ps(c1, to_channels), _mm256_loadu_ps(bias.as_ptr().add(c)));
            let acc = _mm256_fmadd_ps(tap[1], _mm256_permutevar8x32_ps(c2, to_channels), acc);
            let acc = _mm256_fmadd_ps(tap[2], _mm256_permutevar8x32_ps(c3, to_channels), acc);
            _mm256_storeu_ps(y.as_mut_ptr().add(c), _mm256_fmadd_ps(tap[3], xv, acc));
            // rows [s1 s2 s3 x]: the inverse transpose of columns 1..3 and the token
            let xl = _mm256_permutevar8x32_ps(xv, to_lanes);
            let (u0, u1) = (_mm256_unpacklo_ps(c1, c2), _mm256_unpackhi_ps(c1, c2));
            let (u2, u3) = (_mm256_unpacklo_ps(c3, xl), _mm256_unpackhi_ps(c3, xl));
            _mm256_storeu_ps(sp, _mm256_shuffle_ps::<0x44>(u0, u2));
            _mm256_storeu_ps(sp.add(8), _mm256_shuffle_ps::<0xEE>(u0, u2));
            _mm256_storeu_ps(sp.add(16), _mm256_shuffle_ps::<0x44>(u1, u3));
            _mm256_storeu_ps(sp.add(24), _mm256_shuffle_ps::<0xEE>(u1, u3));
        }
    }
    done
}

/// The decode update of the pool's conv state (W = 4, `[n, 3]` per block:
/// the newest three inputs, oldest first) before SiLU, 8 channels at a time,
/// with the weights channel-major `[n, 4]` as given (a 4x4 transpose in each
/// 128-bit half of four registers puts tap j of the 8 channels in one: a
/// per-call token-major copy of the weights cost a batch-1 decode more than
/// the kernel saved). The 8 rows are 24 floats in three registers where each state column
/// sits in lanes no other register of it uses (column k of channel c is
/// element 3c + k), so two blends gather a column and one permute puts it in
/// channel order; the same fused multiply-adds in the same order as
/// [`conv_update_row`] (bias, then oldest first); the new rows (columns 1,
/// 2 and the token) go back the same way reversed. The compiler's code for
/// the stride-3 rows spent ~50 cycles per 8 channels de-interleaving them
/// (a batch-1 decode's conv took 15 us of a 150 us layer). Returns the
/// channels done (a multiple of 8); the rest is the caller's.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_s3_avx2(wc: &[f32], bias: &[f32], st: &mut [f32], x: &[f32], y: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = y.len();
    let done = n / 8 * 8;
    let (wc, bias, st, x) = (&wc[..4 * n], &bias[..n], &mut st[..3 * n], &x[..n]);
    // column k gathered by blends sits in lane order; lane -> channel of column k,
    // which is also the permute from that lane order to channel order and back
    let lanes =
        [_mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5), _mm256_setr_epi32(5, 0, 3, 6, 1, 4, 7, 2), _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7)];
    let to_channels =
        [_mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5), _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6), _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7)];
    for c in (0..done).step_by(8) {
        // SAFETY: c + 8 <= n: channels c..c+8 of every slice checked above
        // (state 3c..3c+24, weights 4c..4c+32); unaligned accesses.
        unsafe {
            let tap = taps8(wc.as_ptr().add(4 * c));
            let sp = st.as_mut_ptr().add(3 * c);
            let (r0, r1, r2) = (_mm256_loadu_ps(sp), _mm256_loadu_ps(sp.add(8)), _mm256_loadu_ps(sp.add(16)));
            // column 0 at lanes 0 3 6 of r0, 1 4 7 of r1, 2 5 of r2; column 1 one
            // element later (r0: 1 4 7, r1: 2 5, r2: 0 3 6); column 2 two later
            let g0 = _mm256_blend_ps::<0b0010_0100>(_mm256_blend_ps::<0b1001_0010>(r0, r1), r2);
            let g1 = _mm256_blend_ps::<0b0100_1001>(_mm256_blend_ps::<0b0010_0100>(r0, r1), r2);
            let g2 = _mm256_blend_ps::<0b1001_0010>(_mm256_blend_ps::<0b0100_1001>(r0, r1), r2);
            let s0 = _mm256_permutevar8x32_ps(g0, to_channels[0]);
            let s1 = _mm256_permutevar8x32_ps(g1, to_channels[1]);
            let s2 = _mm256_permutevar8x32_ps(g2, to_channels[2]);
            let xv = _mm256_loadu_ps(x.as_ptr().add(c));
            let acc = _mm256_fmadd_ps(tap[0], s0, _mm256_loadu_ps(bias.as_ptr().add(c)));
            let acc = _mm256_fmadd_ps(tap[1], s1, acc);
            let acc = _mm256_fmadd_ps(tap[2], s2, acc);
            _mm256_storeu_ps(y.as_mut_ptr().add(c), _mm256_fmadd_ps(tap[3], xv, acc));
            // the new rows [s1 s2 x]: new column k is old column k + 1 (the token for k = 2),
            // put in column k's lane order and blended back into the three registers
            let n0 = _mm256_permutevar8x32_ps(s1, lanes[0]);
            let n1 = _mm256_permutevar8x32_ps(s2, lanes[1]);
            let n2 = _mm256_permutevar8x32_ps(xv, lanes[2]);
            _mm256_storeu_ps(sp, _mm256_blend_ps::<0b0010_0100>(_mm256_blend_ps::<0b1001_0010>(n0, n1), n2));
            _mm256_storeu_ps(sp.add(8), _mm256_blend_ps::<0b0100_1001>(_mm256_blend_ps::<0b0010_0100>(n0, n1), n2));
            _mm256_storeu_ps(sp.add(16), _mm256_blend_ps::<0b1001_0010>(_mm256_blend_ps::<0b0100_1001>(n0, n1), n2));
        }
    }
    done
}

// The decode form of `conv_row` on a channels-first f32 state `[n, s_len]`
// (oldest first; the newest W-1 columns are the window, `s_len >= W-1`),
// shifted in place, with the channel-major weights `[n, W]` as given (the
// state's interleave): the same fused multiply-adds in the same order (bias
// first, oldest input first), so the same bits.
vmath::dispatch!(
    fn conv_update_row(wc: &[f32], bias: &[f32], st: &mut [f32], s_len: usize, x: &[f32], w: usize, y: &mut [f32]) {
        let (n, w1) = (y.len(), w - 1);
        let (bias, x) = (&bias[..n], &x[..n]);
        // The models' width (W = 4), unrolled, on the pool's state (S = 3) and on
        // transformers' (S = 4); zipped exact chunks (no bounds checks) so that
        // the compiler vectorises the interleaved accesses.
        #[inline(always)]
        fn width4<const S: usize>(wc: &[f32], bias: &[f32], st: &mut [f32], x: &[f32], y: &mut [f32]) {
            let n = y.len();
            let (wc, st) = (&wc[..4 * n], &mut st[..S * n]);
            for ((((s, wr), &xc), &b), yc) in st.chunks_exact_mut(S).zip(wc.chunks_exact(4)).zip(x).zip(bias).zip(y.iter_mut()) {
                let (s0, s1, s2) = (s[S - 3], s[S - 2], s[S - 1]);
                let acc = wr[0].mul_add(s0, b);
                let acc = wr[1].mul_add(s1, acc);
                let acc = wr[2].mul_add(s2, acc);
                *yc = wr[3].mul_add(xc, acc);
                if S == 3 {
                    // written out: the shift loop kept the pool's case from vectorising
                    (s[0], s[1], s[2]) = (s1, s2, xc);
                } else {
                    for i in 0..S - 1 {
                        s[i] = s[i + 1];
                    }
                    s[S - 1] = xc;
                }
            }
        }
        match (w1, s_len) {
            (3, 3) => width4::<3>(wc, bias, st, x, y),
            (3, 4) => width4::<4>(wc, bias, st, x, y),
            _ => {
                let skip = s_len - w1; // older inputs the state keeps but the conv does not read
                for ((((s, wr), &xc), &b), yc) in st.chunks_exact_mut(s_len).zip(wc.chunks_exact(w)).zip(x).zip(bias).zip(y.iter_mut()) {
                    let mut acc = b;
                    for j in 0..w1 {
                        acc = wr[j].mul_add(s[skip + j], acc);
                    }
                    *yc = wr[w1].mul_add(xc, acc);
                    s.copy_within(1.., 0);
                    s[s_len - 1] = xc;
                }
            }
        }
        y.iter_mut().for_each(|v| *v = vmath::silu_lane(*v));
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    }

    /// `len` values of [`lcg`].
    fn lcg_vec(seed: &mut u64, len: usize) -> Vec<f32> {
        (0..len).map(|_| lcg(seed)).collect()
    }

    /// The models' width (W = 4) on the pool's conv state (3 inputs kept) and
    /// on transformers' (4 kept: the oldest leaves the window) through the
    /// AVX2 kernels where the machine has them and through the portable
    /// update: the bits of a per-lane scalar reference, for block lengths
    /// with and without a tail of fewer than 8 channels.
    #[test]
    fn update_of_width_four_matches_the_scalar_reference_bitwise() {
        let mut seed = 11;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for s_len in [3usize, 4] {
            for n in [1usize, 7, 8, 9, 16, 61, 2048] {
                let wc = lcg_vec(&mut seed, n * 4);
                let bias = lcg_vec(&mut seed, n);
                let st0 = lcg_vec(&mut seed, n * s_len);
                let x = lcg_vec(&mut seed, n);
                let mut want_y = vec![0.0f32; n];
                let mut want_st = st0.clone();
                for c in 0..n {
                    // the newest three kept inputs, oldest first
                    let r = &st0[c * s_len + s_len - 3..(c + 1) * s_len];
                    let acc = wc[c * 4].mul_add(r[0], bias[c]);
                    let acc = wc[c * 4 + 1].mul_add(r[1], acc);
                    let acc = wc[c * 4 + 2].mul_add(r[2], acc);
                    want_y[c] = vmath::silu_lane(wc[c * 4 + 3].mul_add(x[c], acc));
                    let row = &mut want_st[c * s_len..(c + 1) * s_len];
                    row.copy_within(1.., 0);
                    row[s_len - 1] = x[c];
                }
                let avx2 = crate::simd::has_avx2();
                // the portable update, then the dispatch (the AVX2 kernels where the CPU has AVX2)
                for path in ["portable", "dispatched"] {
                    let (mut st, mut y) = (st0.clone(), vec![0.0f32; n]);
                    if path == "portable" {
                        conv_update_row(&wc, &bias, &mut st, s_len, &x, 4, &mut y);
                    } else {
                        conv_update(&wc, &bias, &mut st, s_len, &x, 4, &mut y, std::ptr::null());
                    }
                    assert_eq!(bits(&y), bits(&want_y), "{path} outputs, S {s_len} n {n}");
                    assert_eq!(bits(&st), bits(&want_st), "{path} state, S {s_len} n {n}");
                }
                if !avx2 {
                    eprintln!("skipped: the AVX2 kernels (this CPU has no AVX2)");
                }
            }
        }
    }

    /// The decode update (channel-major weights, in place on a channels-first
    /// state) gives the bits of a per-lane scalar reference and of
    /// `conv_row` on the transposed weights, for several widths and block
    /// lengths (vector bodies and tails), on whichever path this machine takes.
    #[test]
    fn update_row_matches_conv_row_bitwise() {
        let mut seed = 7;
        for w in [2usize, 3, 4, 5] {
            for n in [1usize, 15, 16, 17, 100, 2048] {
                let w1 = w - 1;
                let wc = lcg_vec(&mut seed, n * w);
                let bias = lcg_vec(&mut seed, n);
                let st0 = lcg_vec(&mut seed, n * w1);
                let x = lcg_vec(&mut seed, n);
                // the scalar reference: bias first, oldest input first
                let mut want_y = vec![0.0f32; n];
                let mut want_st = st0.clone();
                for c in 0..n {
                    let mut acc = bias[c];
                    for j in 0..w1 {
                        acc = wc[c * w + j].mul_add(st0[c * w1 + j], acc);
                    }
                    acc = wc[c * w + w1].mul_add(x[c], acc);
                    want_y[c] = vmath::silu_lane(acc);
                    want_st[c * w1..(c + 1) * w1].copy_from_slice(&[&st0[c * w1 + 1..(c + 1) * w1], &[x[c]][..]].concat());
                }
                let (mut st, mut y) = (st0.clone(), vec![0.0f32; n]);
                conv_update_row(&wc, &bias, &mut st, w - 1, &x, w, &mut y);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&want_y), "update outputs, w {w} n {n}");
                assert_eq!(bits(&st), bits(&want_st), "updated state, w {w} n {n}");
                // the extend's token-major step on the same window (a ring whose oldest row is 2)
                let mut wt = vec![0.0f32; w * n];
                to_token_major(&wc, w, &mut wt);
                for c in 0..n {
                    for j in 0..w {
                        assert_eq!(wt[j * n + c], wc[c * w + j], "transpose, w {w} n {n}");
                    }
                }
                if w1 == 3 {
                    // the state's columns to three rows and back (a window's load and store)
                    let mut rows = vec![0.0f32; 3 * n];
                    to_token_major(&st0, 3, &mut rows);
                    let mut back = vec![0.0f32; 3 * n];
                    interleave3(&rows[..n], &rows[n..2 * n], &rows[2 * n..], &mut back);
                    assert_eq!(bits(&back), bits(&st0), "state round trip, n {n}");
                    assert_eq!(rows[n + n / 2], st0[3 * (n / 2) + 1], "state column 1, n {n}");
                }
                let head = 2 % w;
                let mut ring = vec![0.0f32; w * n];
                for c in 0..n {
                    for j in 0..w {
                        ring[((head + j) % w) * n + c] = if j < w1 { st0[c * w1 + j] } else { x[c] };
                    }
                }
                let mut y2 = vec![0.0f32; n];
                conv_row(&wt, &bias, &ring, head, w, &mut y2);
                assert_eq!(bits(&y2), bits(&want_y), "conv_row outputs, w {w} n {n}");
            }
        }
    }
}
