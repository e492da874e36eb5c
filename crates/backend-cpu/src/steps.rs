//! The fused one-token steps of decode, verify and replay commit: every step
//! of one request on one head in a single pass over the head's state, in
//! place (decode), from the parent step into the scratch (verify), into no
//! state at all (replay verify, which records each step's k, v, g, beta), or
//! from recorded steps with only the last written back in place (replay
//! commit), with a K-major in-place decode that reads the state where it
//! lies. The extend runs its one-token chunks through the same step, so a
//! 1-token chunk gives a decode's bits; every caller runs the same arithmetic
//! in the same order, so a replayed path gives the bits of its decodes.

use crate::delta_views::DeltaViews;
use crate::scratch::grow;
use crate::simd::{self, StateElem};
use deltanet_core::LayoutKind;
use std::cell::RefCell;

/// Columns of a K-major state block processed together by [`steps_head`].
const BW: usize = 128;
/// Columns accumulated in registers at a time (divides [`BW`]) with AVX2:
/// 2 x 4 ymm accumulators.
const ACC: usize = 32;
/// The same with AVX-512: 2 x 4 zmm accumulators, enough independent
/// multiply-add chains to cover their latency. The width changes no bits
/// (each column sums over K in order whatever the width).
const ACC512: usize = 64;

/// Columns of a block of [`decode_kmajor`] with `A` register columns: `A`
/// f32 columns' bytes per state row (a multiple of `A`, at most [`BW`]), so
/// that a block the first pass brought in is still in L1 for the second.
/// With AVX-512 (`A` = 64) that is 256 bytes, 32 KiB blocks for K = 128 (the
/// 48 KiB L1 of a Zen 5); with AVX2 (`A` = 32) 128 bytes, 16 KiB blocks: the
/// 32 KiB blocks overflowed the 32 KiB L1 of a Zen 4 (a block, k, q and the
/// update's vector together): on a 2-core Zen 4 VM (AVX2 only) a cold
/// batch-8 decode of a Qwen3.5-0.8B layer takes 0.67-0.85 of the time with
/// 16 KiB blocks (batch 1: 0.91), a warm one the same.
#[inline(always)]
const fn decode_block<E, const A: usize>() -> usize {
    let c = A * 4 / std::mem::size_of::<E>();
    if c > BW {
        BW
    } else {
        c
    }
}

/// Per-step scalars and vectors of a multi-step run, grown on demand (size D, not T).
#[derive(Default)]
struct StepScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    beta: Vec<f32>,
    d: Vec<f32>,
    kq: Vec<f32>,
    /// Per-step state blocks (K-major: `[D, K, BW]`; V-major: `[D, K]`).
    blk: Vec<f32>,
    /// Source block.
    src: Vec<f32>,
    o: Vec<f32>,
    acc: Vec<f32>,
}

thread_local! {
    static STEPS: RefCell<StepScratch> = RefCell::new(StepScratch::default());
}

/// Where the steps of a run read their q, k, v, g, beta.
#[derive(Clone, Copy)]
pub(crate) enum StepInputs<'a> {
    /// Step `i` is token `tokens[i]` of the call's tensors, its output written
    /// to the call's output. With one `record` pointer per step (else empty),
    /// the step's k (as used: normalised when asked), v, g and beta are also
    /// written there, f32 (a replay verify's record, `K + V + 2` values).
    Call { io: &'a DeltaViews<'a>, tokens: &'a [usize], record: &'a [*mut f32] },
    /// Step `i` reads the record at `records[i]` (written by a replay verify
    /// for the same head) and produces no output: a replay commit.
    Recorded { kd: usize, vd: usize, records: &'a [*const f32] },
}

impl StepInputs<'_> {
    fn steps(&self) -> usize {
        match self {
            StepInputs::Call { tokens, .. } => tokens.len(),
            StepInputs::Recorded { records, .. } => records.len(),
        }
    }
}

/// One request's steps on one head, fused into a single pass over the state:
/// step `i` reads its inputs ([`StepInputs`]), starts from `parents[i]` (an
/// earlier step, or the state at `src` for `None`) and writes its state to
/// `dsts[i]` (null: written nowhere) and, for a call, its output row. Decode
/// is one step with `dsts[0] == src`; verify is D steps into the scratch;
/// replay verify is D steps with null `dsts`; replay commit is the path's
/// steps with only the last written, to `src`. Every step's state is rounded
/// to `E` before a child reads it, so a chain gives the same bits as
/// sequential decodes. Only needed work is done: on K-major state a step with
/// no destination and no child (a replay verify's leaf) computes no state, and
/// a run from records (no outputs) does not sum `S^T q`.
///
/// # Safety
/// `src` and every non-null `dsts[i]` point to `K*V` elements no other thread
/// touches during the call; the non-null `dsts` are pairwise disjoint and
/// disjoint from `src`, except that the last may equal `src` (each block of
/// the source is read before any of it is written). Each `record` pointer of
/// a call points to `K + V + 2` writable f32 nobody else touches; each
/// `records` pointer to as many readable f32. `next` (the head the next task
/// reads, or null) is only prefetched, never read.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn steps_head<E: StateElem>(
    kind: LayoutKind,
    inputs: StepInputs<'_>,
    h: usize,
    parents: &[Option<usize>],
    src: *const E,
    dsts: &[*mut E],
    next: *const E,
) {
    STEPS.with(|sc| {
        let mut sc = sc.borrow_mut();
        if E::NARROW && simd::has_avx512bf16() {
            // SAFETY: AVX512_BF16, AVX-512F, AVX2 and FMA are present; the pointer contract is the caller's.
            unsafe { steps_head_avx512bf16::<E>(&mut sc, kind, inputs, h, parents, src, dsts, next) }
        } else if simd::has_avx512() {
            // SAFETY: AVX-512F, AVX2 and FMA are present; the pointer contract is the caller's.
            unsafe { steps_head_avx512::<E>(&mut sc, kind, inputs, h, parents, src, dsts, next) }
        } else if simd::has_avx2() {
            // SAFETY: AVX2 and FMA are present; the pointer contract is the caller's.
            unsafe { steps_head_avx2::<E>(&mut sc, kind, inputs, h, parents, src, dsts, next) }
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { steps_head_body::<E, ACC>(&mut sc, kind, inputs, h, parents, src, dsts, next) }
        }
    })
}

/// Defines `$name`: [`steps_head_body`] compiled with the target features
/// `$features` and `$acc` register columns, for [`steps_head`] to pick at run
/// time (the same body in every version, so the same bits).
macro_rules! steps_head_with {
    ($name:ident, $features:literal, $acc:expr) => {
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<E: StateElem>(
            sc: &mut StepScratch,
            kind: LayoutKind,
            inputs: StepInputs<'_>,
            h: usize,
            parents: &[Option<usize>],
            src: *const E,
            dsts: &[*mut E],
            next: *const E,
        ) {
            // SAFETY: forwarded from the caller.
            unsafe { steps_head_body::<E, $acc>(sc, kind, inputs, h, parents, src, dsts, next) }
        }
    };
}

steps_head_with!(steps_head_avx2, "avx2,fma", ACC);
steps_head_with!(steps_head_avx512, "avx512f,avx2,fma", ACC512);
// bf16 state: the update's rounding (`vcvtne2ps2bf16`) inlines into the loop
steps_head_with!(steps_head_avx512bf16, "avx512bf16,avx512f,avx2,fma", ACC512);

/// A decode (one step, in place) on a K-major head, reading the state where it
/// lies: the general path's f32 copy of the block does not fit L1 and costs an
/// L2 write and two L2 reads per element, which is what bounded decode. The
/// head goes in blocks of [`decode_block`] columns (32 or 64 f32, twice as
/// many bf16), so a block the first pass (`S^T k`, `S^T q`) brought in is
/// still in L1 when the second (the update) reads and writes it; the prefetch
/// of the next head is spread over both passes, so memory keeps streaming
/// while the update runs. Same arithmetic in the same order as the general
/// path (each column sums over K in order whatever the block), so a decode
/// and a verify step give the same bits.
///
/// # Safety
/// `st` points to the `K*V` elements of one head no other thread touches.
#[inline(always)]
unsafe fn decode_kmajor<E: StateElem, const A: usize>(
    sc: &mut StepScratch,
    kd: usize,
    vd: usize,
    scale: f32,
    st: *mut E,
    pf: &mut simd::Prefetch,
) {
    let (kv, qv) = (&sc.k[..kd], &sc.q[..kd]);
    let (beta, d, kq) = (sc.beta[0], sc.d[0], sc.kq[0]);
    let (sk, sq) = sc.acc.split_at_mut(BW);
    let bw = decode_block::<E, A>();
    let mut c0 = 0;
    while c0 < vd {
        let w = bw.min(vd - c0);
        // S^T k and S^T q over columns c0..c0+w, ACC columns in registers at a time
        let mut jb = 0;
        while jb < w {
            let aw = A.min(w - jb);
            let (mut a1, mut a2) = ([0f32; A], [0f32; A]);
            for kk in 0..kd {
                pf.step();
                // SAFETY: row kk, columns c0+jb..c0+jb+aw of the head.
                let row = unsafe { std::slice::from_raw_parts(st.add(kk * vd + c0 + jb), aw) };
                let (a, b) = (kv[kk], qv[kk]);
                if let Ok(row) = <&[E; A]>::try_from(row) {
                    for j in 0..A {
                        let p = row[j].ld();
                        a1[j] = p.mul_add(a, a1[j]);
                        a2[j] = p.mul_add(b, a2[j]);
                    }
                } else {
                    for j in 0..aw {
                        let p = row[j].ld();
                        a1[j] = p.mul_add(a, a1[j]);
                        a2[j] = p.mul_add(b, a2[j]);
                    }
                }
            }
            sk[jb..jb + aw].copy_from_slice(&a1[..aw]);
            sq[jb..jb + aw].copy_from_slice(&a2[..aw]);
            jb += aw;
        }
        let vrow = &sc.v[c0..c0 + w];
        let orow = &mut sc.o[c0..c0 + w];
        for j in 0..w {
            let u = beta * (vrow[j] - d * sk[j]);
            orow[j] = scale * (d * sq[j] + u * kq);
            sk[j] = u;
        }
        // SAFETY: rows 0..kd, columns c0..c0+w of the head; no other reference to them is live.
        unsafe { update_block::<E, A>(st.add(c0), vd, kv, d, &sk[..w], pf) };
        c0 += w;
    }
}

/// The update pass of one [`decode_kmajor`] block, in place:
/// [`StateElem::update_rows`], except that f32 rows of exactly `A` columns
/// (every block of a head whose V is a multiple of `A`) run at that fixed
/// width, `u` held in registers and no per-row length or overlap checks: in
/// the general loop that overhead cost as much as a row's four AVX2 vectors
/// (a cold batch-8 decode on one core 1100-1116 -> 814-936 us on the 2-core
/// AVX2 VM). The same expression per element, so the same bits. (Running
/// this pass in the row loop of the next block's sums was no faster warm and
/// slower cold.)
///
/// # Safety
/// As [`StateElem::update_rows`] for `kv.len()` rows of `u.len()` elements.
#[inline(always)]
unsafe fn update_block<E: StateElem, const A: usize>(st: *mut E, stride: usize, kv: &[f32], d: f32, u: &[f32], pf: &mut simd::Prefetch) {
    if let (false, Ok(u)) = (E::NARROW, <&[f32; A]>::try_from(u)) {
        let u: [f32; A] = *u;
        for (kk, &a) in kv.iter().enumerate() {
            pf.step();
            // SAFETY: row kk's A elements are writable and unaliased (the caller's contract).
            let row = unsafe { &mut *(st.add(kk * stride) as *mut [E; A]) };
            for j in 0..A {
                row[j] = E::st(d.mul_add(row[j].ld(), a * u[j]));
            }
        }
        return;
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { E::update_rows(st, stride, kv, d, u, || pf.step()) }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn steps_head_body<E: StateElem, const A: usize>(
    sc: &mut StepScratch,
    kind: LayoutKind,
    inputs: StepInputs<'_>,
    h: usize,
    parents: &[Option<usize>],
    src: *const E,
    dsts: &[*mut E],
    next: *const E,
) {
    let (kd, vd) = match inputs {
        StepInputs::Call { io, .. } => (io.dims.head_k_dim, io.dims.head_v_dim),
        StepInputs::Recorded { kd, vd, .. } => (kd, vd),
    };
    let n = inputs.steps();
    grow(&mut sc.q, n * kd);
    grow(&mut sc.k, n * kd);
    grow(&mut sc.v, n * vd);
    grow(&mut sc.beta, n);
    grow(&mut sc.d, n);
    grow(&mut sc.kq, n);
    grow(&mut sc.o, n * vd);
    grow(&mut sc.blk, n * kd * BW.max(1));
    grow(&mut sc.src, kd * BW);
    grow(&mut sc.acc, 2 * BW);
    let scale = match inputs {
        StepInputs::Call { io, tokens, record } => {
            for (i, &t) in tokens.iter().enumerate() {
                io.load_qk(t, h, &mut sc.q[i * kd..(i + 1) * kd], &mut sc.k[i * kd..(i + 1) * kd]);
                io.v.row(io.v.off2(t, h), &mut sc.v[i * vd..(i + 1) * vd]);
                sc.beta[i] = io.beta.get(io.beta.off2(t, h));
                let g = io.g.get(io.g.off2(t, h));
                sc.d[i] = decay(g);
                sc.kq[i] = simd::dot(&sc.q[i * kd..(i + 1) * kd], &sc.k[i * kd..(i + 1) * kd]);
                if let Some(&r) = record.get(i) {
                    // SAFETY: the caller's contract: K + V + 2 writable f32 of this task alone.
                    let r = unsafe { std::slice::from_raw_parts_mut(r, kd + vd + 2) };
                    r[..kd].copy_from_slice(&sc.k[i * kd..(i + 1) * kd]);
                    r[kd..kd + vd].copy_from_slice(&sc.v[i * vd..(i + 1) * vd]);
                    r[kd + vd] = g;
                    r[kd + vd + 1] = sc.beta[i];
                }
            }
            io.params.scale
        }
        StepInputs::Recorded { records, .. } => {
            for (i, &r) in records.iter().enumerate() {
                // SAFETY: the caller's contract: K + V + 2 readable f32.
                let r = unsafe { std::slice::from_raw_parts(r, kd + vd + 2) };
                sc.k[i * kd..(i + 1) * kd].copy_from_slice(&r[..kd]);
                sc.v[i * vd..(i + 1) * vd].copy_from_slice(&r[kd..kd + vd]);
                sc.d[i] = decay(r[kd + vd]);
                sc.beta[i] = r[kd + vd + 1];
                // no output: q reads as zeros (finite, discarded)
                sc.q[i * kd..(i + 1) * kd].fill(0.0);
                sc.kq[i] = 0.0;
            }
            0.0
        }
    };
    // verify: scratch states are written once, so bypass the cache (f32 state)
    let stream = !E::NARROW && (n > 1 || !std::ptr::eq(dsts[0], src));
    let bytes = kd * vd * std::mem::size_of::<E>();
    match kind {
        LayoutKind::KMajor if n == 1 && std::ptr::eq(dsts[0], src) => {
            // one prefetch share per row of each pass of each block
            let bw = decode_block::<E, A>();
            let calls = vd.div_ceil(bw) * (bw / A) * kd + vd.div_ceil(bw) * kd;
            let mut pf = simd::Prefetch::new(next, bytes, calls);
            // SAFETY: one step in place on the head at `dsts[0]` (the caller's contract).
            unsafe { decode_kmajor::<E, A>(sc, kd, vd, scale, dsts[0], &mut pf) };
        }
        LayoutKind::KMajor => {
            let outputs = matches!(inputs, StepInputs::Call { .. });
            let mut pf = simd::Prefetch::new(next, bytes, vd.div_ceil(BW) * (BW / A) * kd);
            let mut c0 = 0;
            while c0 < vd {
                let w = BW.min(vd - c0);
                // load the source block [K, w]
                for kk in 0..kd {
                    // SAFETY: row kk, columns c0..c0+w of the source head.
                    let s = unsafe { std::slice::from_raw_parts(src.add(kk * vd + c0), w) };
                    sc.src[kk * BW..kk * BW + w].iter_mut().zip(s).for_each(|(d, x)| *d = x.ld());
                }
                for i in 0..n {
                    let (done, rest) = sc.blk.split_at_mut(i * kd * BW);
                    let out = &mut rest[..kd * BW];
                    let parent: &[f32] = match parents[i] {
                        None => &sc.src[..kd * BW],
                        Some(p) => &done[p * kd * BW..(p + 1) * kd * BW],
                    };
                    let (kv, qv) = (&sc.k[i * kd..(i + 1) * kd], &sc.q[i * kd..(i + 1) * kd]);
                    let (sk, sq) = sc.acc.split_at_mut(BW);
                    // S^T k and S^T q over the block, 32 columns at a time so the
                    // accumulators stay in registers
                    for jb in (0..BW).step_by(A) {
                        let (mut a1, mut a2) = ([0f32; A], [0f32; A]);
                        for kk in 0..kd {
                            if i == 0 {
                                pf.step();
                            }
                            let prow: &[f32; A] = parent[kk * BW + jb..kk * BW + jb + A].try_into().expect("A columns");
                            let (a, b) = (kv[kk], qv[kk]);
                            if outputs {
                                for j in 0..A {
                                    a1[j] = prow[j].mul_add(a, a1[j]);
                                    a2[j] = prow[j].mul_add(b, a2[j]);
                                }
                            } else {
                                // a replay commit: S^T q would only feed a discarded output
                                for j in 0..A {
                                    a1[j] = prow[j].mul_add(a, a1[j]);
                                }
                            }
                        }
                        sk[jb..jb + A].copy_from_slice(&a1);
                        sq[jb..jb + A].copy_from_slice(&a2);
                    }
                    let (beta, d, kq) = (sc.beta[i], sc.d[i], sc.kq[i]);
                    let vrow = &sc.v[i * vd + c0..i * vd + c0 + w];
                    let orow = &mut sc.o[i * vd + c0..i * vd + c0 + w];
                    for j in 0..w {
                        let u = beta * (vrow[j] - d * sk[j]);
                        orow[j] = scale * (d * sq[j] + u * kq);
                        sk[j] = u;
                    }
                    let dst = dsts[i];
                    if dst.is_null() && !parents[i + 1..].contains(&Some(i)) {
                        // a replay verify's leaf: its state is read by nobody
                        continue;
                    }
                    for kk in 0..kd {
                        let (prow, orow) = (&parent[kk * BW..kk * BW + w], &mut out[kk * BW..kk * BW + w]);
                        let a = kv[kk];
                        if dst.is_null() {
                            // a state written nowhere (replay): kept, rounded as stored, for the children
                            for j in 0..w {
                                orow[j] = E::st(d.mul_add(prow[j], a * sk[j])).ld();
                            }
                            continue;
                        }
                        // SAFETY: row kk, columns c0..c0+w of step i's destination head; the
                        // source block (which it may alias for one step) is already read.
                        let p = unsafe { dst.add(kk * vd + c0) };
                        if stream {
                            for j in 0..w {
                                orow[j] = d.mul_add(prow[j], a * sk[j]);
                            }
                            // SAFETY: as above; with `stream`, E is f32.
                            if unsafe { simd::stream_f32(p as *mut f32, orow) } {
                                continue;
                            }
                        }
                        // SAFETY: as above.
                        let o = unsafe { std::slice::from_raw_parts_mut(p, w) };
                        if n == 1 {
                            // one step (in-place decodes take decode_kmajor): no child step reads this block back
                            for j in 0..w {
                                o[j] = E::st(d.mul_add(prow[j], a * sk[j]));
                            }
                        } else {
                            for j in 0..w {
                                let r = E::st(d.mul_add(prow[j], a * sk[j]));
                                o[j] = r;
                                orow[j] = r.ld();
                            }
                        }
                    }
                }
                c0 += w;
            }
        }
        LayoutKind::VMajor => {
            let mut pf = simd::Prefetch::new(next, bytes, vd);
            for j in 0..vd {
                pf.step();
                // SAFETY: row j of the source head.
                let s = unsafe { std::slice::from_raw_parts(src.add(j * kd), kd) };
                sc.src[..kd].iter_mut().zip(s).for_each(|(d, x)| *d = x.ld());
                for i in 0..n {
                    let (done, rest) = sc.blk.split_at_mut(i * kd);
                    let out = &mut rest[..kd];
                    let parent: &[f32] = match parents[i] {
                        None => &sc.src[..kd],
                        Some(p) => &done[p * kd..(p + 1) * kd],
                    };
                    let (kv, qv) = (&sc.k[i * kd..(i + 1) * kd], &sc.q[i * kd..(i + 1) * kd]);
                    let (skv, sqv) = simd::dot2(parent, kv, qv);
                    let (beta, d) = (sc.beta[i], sc.d[i]);
                    let u = beta * (sc.v[i * vd + j] - d * skv);
                    sc.o[i * vd + j] = scale * (d * sqv + u * sc.kq[i]);
                    if dsts[i].is_null() {
                        // a state written nowhere (replay): kept, rounded as stored, for the children
                        for ((o, p), a) in out.iter_mut().zip(parent).zip(kv) {
                            *o = E::st(d * p + u * a).ld();
                        }
                        continue;
                    }
                    // SAFETY: row j of step i's destination head; the source row is already read.
                    let p = unsafe { dsts[i].add(j * kd) };
                    if stream {
                        for ((o, p), a) in out.iter_mut().zip(parent).zip(kv) {
                            *o = d * p + u * a;
                        }
                        // SAFETY: as above; with `stream`, E is f32.
                        if unsafe { simd::stream_f32(p as *mut f32, out) } {
                            continue;
                        }
                    }
                    // SAFETY: as above.
                    let o = unsafe { std::slice::from_raw_parts_mut(p, kd) };
                    if n == 1 {
                        for ((o, p), a) in o.iter_mut().zip(parent).zip(kv) {
                            *o = E::st(d * p + u * a);
                        }
                    } else {
                        for ((o, (b, p)), a) in o.iter_mut().zip(out.iter_mut().zip(parent)).zip(kv) {
                            let r = E::st(d * p + u * a);
                            *o = r;
                            *b = r.ld();
                        }
                    }
                }
            }
        }
    }
    if stream {
        simd::store_fence();
    }
    if let StepInputs::Call { io, tokens, .. } = inputs {
        for (i, &t) in tokens.iter().enumerate() {
            // SAFETY: output row (t, h) belongs to this task alone.
            unsafe { io.o.store(io.o.off2(t, h), &sc.o[i * vd..(i + 1) * vd]) };
        }
    }
}

/// The decay `exp(g)` of a step, computed in f64 and rounded once: the same
/// bits wherever a step's g is read (the call's tensor or a replay record).
#[inline(always)]
fn decay(g: f32) -> f32 {
    (g as f64).exp() as f32
}
