//! The delta-rule kernels: the chunked extend of DESIGN §2 (dense per-chunk
//! products through `gemm`), and the fused one-token step used by decode and
//! verify.

use crate::io::{In, Out, RawBuf};
use crate::simd::{self, StateElem};
use deltanet_core::{DeltaParams, ExtendBatch, LayoutKind, ModelDims, PoolGeometry, L2NORM_EPS};
use std::cell::RefCell;

/// Chunk length of the chunked extend.
pub const CHUNK: usize = 64;

/// The tensors of one delta-rule call, as host views.
#[derive(Clone, Copy)]
pub(crate) struct DeltaViews<'a> {
    pub q: In<'a>,
    pub k: In<'a>,
    pub v: In<'a>,
    pub g: In<'a>,
    pub beta: In<'a>,
    pub o: Out,
    pub dims: ModelDims,
    pub params: DeltaParams,
}

impl DeltaViews<'_> {
    /// Loads the (optionally L2-normalised) q and k rows of token `t` for value head `h`.
    #[inline]
    fn load_qk(&self, t: usize, h: usize, q: &mut [f32], k: &mut [f32]) {
        let kh = self.dims.key_head(h);
        self.q.row(self.q.off2(t, kh), q);
        self.k.row(self.k.off2(t, kh), k);
        if self.params.use_qk_l2norm {
            l2norm(q);
            l2norm(k);
        }
    }
}

/// `x / sqrt(sum(x^2) + eps)` in f32.
#[inline]
pub(crate) fn l2norm(x: &mut [f32]) {
    let ss = simd::dot(x, x);
    let inv = 1.0 / (ss + L2NORM_EPS).sqrt();
    x.iter_mut().for_each(|a| *a *= inv);
}

/// Per-thread scratch of the extend, sized for one (K, V); reused across calls.
#[derive(Default)]
struct Workspace {
    dims: (usize, usize),
    /// Length of the chunk last run.
    clen: usize,
    /// Working state of the value head being run, K-major `[K, V]`.
    s: Vec<f32>,
    /// Working states of the other value heads of the task's key head (swapped with `s`).
    states: Vec<Vec<f32>>,
    /// State at the chunk start `[K, V]` (kept for snapshots inside the chunk).
    snap: Vec<f32>,
    /// A snapshot state `[K, V]`.
    snap_out: Vec<f32>,
    /// `[Q; K]` rows of the chunk `[2C, K]`.
    qk: Vec<f32>,
    /// Decay-weighted keys `[C, K]`.
    kd: Vec<f32>,
    /// Values `[C, V]`.
    v: Vec<f32>,
    /// `[Q; K] S` `[2C, V]`.
    x: Vec<f32>,
    /// `[Q; K] K^T` `[2C, C]`.
    y: Vec<f32>,
    /// `V - diag(exp G) K S` `[C, V]`.
    r: Vec<f32>,
    /// `V'` `[C, V]`.
    vp: Vec<f32>,
    /// Outputs `[C, V]`.
    o: Vec<f32>,
    /// `T diag(beta)` `[C, C]`.
    tb: Vec<f32>,
    /// `Q K^T ⊙ L` `[C, C]`.
    p: Vec<f32>,
    /// Decay matrix `L` `[C, C]`, f64.
    l: Vec<f64>,
    /// `I + M` solve scratch `[C, C]`, f64.
    t64: Vec<f64>,
    /// `exp(G_i)` from the chunk start, f64.
    gam: Vec<f64>,
    /// beta per token.
    beta: Vec<f32>,
}

impl Workspace {
    fn ensure(&mut self, k: usize, v: usize) {
        if self.dims == (k, v) {
            return;
        }
        let c = CHUNK;
        *self = Workspace {
            dims: (k, v),
            clen: 0,
            s: vec![0.0; k * v],
            states: Vec::new(),
            snap: vec![0.0; k * v],
            snap_out: vec![0.0; k * v],
            qk: vec![0.0; 2 * c * k],
            kd: vec![0.0; c * k],
            v: vec![0.0; c * v],
            x: vec![0.0; 2 * c * v],
            y: vec![0.0; 2 * c * c],
            r: vec![0.0; c * v],
            vp: vec![0.0; c * v],
            o: vec![0.0; c * v],
            tb: vec![0.0; c * c],
            p: vec![0.0; c * c],
            l: vec![0.0; c * c],
            t64: vec![0.0; c * c],
            gam: vec![0.0; c],
            beta: vec![0.0; c],
        };
    }
}

thread_local! {
    static WS: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// `dst[m, n] = alpha * dst + beta * lhs[m, k] * rhs[k, n]` (dst row-major with
/// row stride `dst_rs`; lhs/rhs given by row and column strides), single-threaded.
///
/// # Safety
/// Every addressed element must be in bounds; dst must not overlap lhs or rhs.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    read_dst: bool,
    alpha: f32,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    beta: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Loads one head's state (layout `kind`, element `E`) into K-major f32 `dst`.
///
/// # Safety
/// `src` points to `k*v` readable elements.
pub(crate) unsafe fn load_state<E: StateElem>(kind: LayoutKind, src: *const E, k: usize, v: usize, dst: &mut [f32]) {
    // SAFETY: the caller guarantees k*v readable elements.
    let s = unsafe { std::slice::from_raw_parts(src, k * v) };
    match kind {
        LayoutKind::KMajor => dst.iter_mut().zip(s).for_each(|(d, x)| *d = x.ld()),
        LayoutKind::VMajor => {
            for (vv, row) in s.chunks_exact(k).enumerate() {
                for (kk, x) in row.iter().enumerate() {
                    dst[kk * v + vv] = x.ld();
                }
            }
        }
    }
}

/// Stores K-major f32 `src` as one head's state in layout `kind`, element `E`.
///
/// # Safety
/// `dst` points to `k*v` writable elements nobody else touches during the call.
pub(crate) unsafe fn store_state<E: StateElem>(kind: LayoutKind, src: &[f32], k: usize, v: usize, dst: *mut E) {
    // SAFETY: the caller guarantees k*v exclusive writable elements.
    let d = unsafe { std::slice::from_raw_parts_mut(dst, k * v) };
    match kind {
        LayoutKind::KMajor => d.iter_mut().zip(src).for_each(|(d, x)| *d = E::st(*x)),
        LayoutKind::VMajor => {
            for (vv, row) in d.chunks_exact_mut(k).enumerate() {
                for (kk, x) in row.iter_mut().enumerate() {
                    *x = E::st(src[kk * v + vv]);
                }
            }
        }
    }
}

/// Where the extend reads and writes the pool.
#[derive(Clone, Copy)]
pub(crate) struct ExtendTarget<'b> {
    pub temporal: RawBuf,
    pub geometry: &'b PoolGeometry,
    pub layer: usize,
    pub batch: &'b ExtendBatch,
}

/// The chunked extend of sequence `s` for every value head reading key head
/// `kh`: loads the slot states (or zero), runs chunks of [`CHUNK`] aligned to the sequence start, writes
/// outputs, snapshots and the final state.
pub(crate) fn extend_head<E: StateElem>(kind: LayoutKind, io: &DeltaViews<'_>, tgt: &ExtendTarget<'_>, s: usize, h: usize) {
    WS.with(|ws| {
        let mut ws = ws.borrow_mut();
        if simd::has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            unsafe { extend_head_avx2::<E>(&mut ws, kind, io, tgt, s, h) }
        } else {
            extend_head_body::<E>(&mut ws, kind, io, tgt, s, h)
        }
    })
}

#[target_feature(enable = "avx2,fma")]
unsafe fn extend_head_avx2<E: StateElem>(
    ws: &mut Workspace,
    kind: LayoutKind,
    io: &DeltaViews<'_>,
    tgt: &ExtendTarget<'_>,
    s: usize,
    h: usize,
) {
    extend_head_body::<E>(ws, kind, io, tgt, s, h)
}

#[inline(always)]
fn extend_head_body<E: StateElem>(ws: &mut Workspace, kind: LayoutKind, io: &DeltaViews<'_>, tgt: &ExtendTarget<'_>, s: usize, kh: usize) {
    let (kd, vd) = (io.dims.head_k_dim, io.dims.head_v_dim);
    ws.ensure(kd, vd);
    let per = kd * vd;
    let head_bytes = per * std::mem::size_of::<E>();
    let g = tgt.geometry;
    let slot = tgt.batch.slots()[s].index();
    // the value heads that read key head `kh`: they share q, k and the [Q; K] K^T product
    let heads = || (0..io.dims.num_v_heads).filter(move |&h| io.dims.key_head(h) == kh);
    let nh = heads().count();
    ws.states.resize_with(nh, Vec::new);
    for (i, h) in heads().enumerate() {
        let st = &mut ws.states[i];
        st.resize(per, 0.0);
        if tgt.batch.has_initial_state()[s] {
            let state = tgt.temporal.typed::<E>(g.temporal_offset(tgt.layer, slot) + h * head_bytes, per);
            // SAFETY: `state` addresses (slot, h), which only this task touches.
            unsafe { load_state::<E>(kind, state, kd, vd, st) };
        } else {
            st.fill(0.0);
        }
    }
    let range = tgt.batch.seq_range(s);
    let len = range.len();
    let first = heads().next().expect("every key head has a value head");
    let mut cs = 0;
    while cs < len {
        let c = CHUNK.min(len - cs);
        let inner = tgt.batch.snapshots_of(s).any(|sn| sn.position > cs && sn.position < cs + c);
        if c > 1 {
            load_keys(ws, io, first, range.start + cs, c);
        }
        for (i, h) in heads().enumerate() {
            std::mem::swap(&mut ws.s, &mut ws.states[i]);
            if c == 1 {
                one_step(ws, kind, io, h, range.start + cs);
            } else {
                chunk(ws, io, h, range.start + cs, c, inner);
            }
            // snapshots inside or at the end of this chunk
            for sn in tgt.batch.snapshots_of(s) {
                if sn.position > cs && sn.position <= cs + c {
                    let pl = sn.position - cs;
                    let dst = tgt.temporal.typed::<E>(g.temporal_offset(tgt.layer, sn.slot.index()) + h * head_bytes, per);
                    if pl == c {
                        // SAFETY: snapshot slots are distinct from every batch slot and each other.
                        unsafe { store_state::<E>(kind, &ws.s, kd, vd, dst) };
                    } else {
                        snapshot_in_chunk(ws, pl);
                        // SAFETY: as above.
                        unsafe { store_state::<E>(kind, &ws.snap_out, kd, vd, dst) };
                    }
                }
            }
            if E::NARROW {
                ws.s.iter_mut().for_each(|x| *x = E::st(*x).ld());
            }
            std::mem::swap(&mut ws.s, &mut ws.states[i]);
        }
        if PREFETCH && cs + c < len {
            for h in heads() {
                prefetch_chunk(io, h, range.start + cs + c, CHUNK.min(len - cs - c));
            }
        }
        cs += c;
    }
    for (i, h) in heads().enumerate() {
        let state = tgt.temporal.typed::<E>(g.temporal_offset(tgt.layer, slot) + h * head_bytes, per);
        // SAFETY: this task's (slot, h).
        unsafe { store_state::<E>(kind, &ws.states[i], kd, vd, state) };
    }
}

/// A chunk of one token: the one-step arithmetic of a decode on a pool of
/// layout `kind` (run on the working state, transposed for V-major), so that
/// a 1-token sequence of an extend costs what a decode costs and gives the
/// same bits as a decode of its token, wherever the chunk of one comes from
/// (a 1-token sequence, the tail of a 65-token one, a 1-token prefill chunk).
#[inline(always)]
fn one_step(ws: &mut Workspace, kind: LayoutKind, io: &DeltaViews<'_>, h: usize, t: usize) {
    let (kd, vd) = ws.dims;
    let st = match kind {
        LayoutKind::KMajor => &mut ws.s,
        LayoutKind::VMajor => {
            for (kk, row) in ws.s.chunks_exact(vd).enumerate() {
                row.iter().enumerate().for_each(|(vv, &x)| ws.snap_out[vv * kd + kk] = x);
            }
            &mut ws.snap_out
        }
    };
    let p = st.as_mut_ptr();
    // SAFETY: `p` is this thread's K*V working state, in `kind`'s order; one step in place.
    unsafe { steps_head::<f32>(kind, io, h, &[t], &[None], p, &[p], std::ptr::null()) };
    if kind == LayoutKind::VMajor {
        for (vv, row) in ws.snap_out.chunks_exact(kd).enumerate() {
            row.iter().enumerate().for_each(|(kk, &x)| ws.s[kk * vd + vv] = x);
        }
    }
}

/// Whether to prefetch the next chunk's rows.
const PREFETCH: bool = true;

/// Asks the CPU to start fetching the rows of the next chunk while this one computes.
#[inline(always)]
fn prefetch_chunk(io: &DeltaViews<'_>, h: usize, t0: usize, c: usize) {
    let kh = io.dims.key_head(h);
    for i in 0..c {
        io.q.prefetch(io.q.off2(t0 + i, kh), io.dims.head_k_dim);
        io.k.prefetch(io.k.off2(t0 + i, kh), io.dims.head_k_dim);
        io.v.prefetch(io.v.off2(t0 + i, h), io.dims.head_v_dim);
    }
}

/// The state after the first `pl` (< chunk length) tokens of the chunk just
/// run: `exp(G_{pl-1}) S_0 + sum_{j<pl} L[pl-1, j] k_j v'_j^T`, into
/// `ws.snap_out` (`ws.snap` holds `S_0`, saved by [`chunk`], and is kept for
/// further snapshots in the same chunk).
#[inline(always)]
fn snapshot_in_chunk(ws: &mut Workspace, pl: usize) {
    let (kd, vd) = ws.dims;
    let (cc, c) = (CHUNK, ws.clen);
    let i = pl - 1;
    for j in 0..pl {
        let w = ws.l[i * cc + j] as f32;
        let (dst, src) = (&mut ws.kd[j * kd..(j + 1) * kd], &ws.qk[(c + j) * kd..(c + j + 1) * kd]);
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = w * s);
    }
    let alpha = ws.gam[i] as f32;
    ws.snap_out.copy_from_slice(&ws.snap);
    // SAFETY: snap_out [K, V]; kd^T is [K, pl] with rows stride 1 / cols stride K; vp [pl, V].
    unsafe { mm(kd, vd, pl, ws.snap_out.as_mut_ptr(), vd, true, alpha, ws.kd.as_ptr(), 1, kd, ws.vp.as_ptr(), vd, 1, 1.0) };
}

/// Loads q (rows 0..c) and k (rows c..2c) of the chunk, normalised, for the
/// key head of value head `h`, and `Y = [Q; K] K^T` (shared by every value
/// head of that key head).
#[inline(always)]
fn load_keys(ws: &mut Workspace, io: &DeltaViews<'_>, h: usize, t0: usize, c: usize) {
    let kd = ws.dims.0;
    ws.clen = c;
    for i in 0..c {
        let (qpart, kpart) = ws.qk.split_at_mut(c * kd);
        io.load_qk(t0 + i, h, &mut qpart[i * kd..(i + 1) * kd], &mut kpart[i * kd..(i + 1) * kd]);
    }
    let (qp, kp) = (ws.qk.as_ptr(), ws.qk[c * kd..].as_ptr());
    // SAFETY: Y [2C, C] and [Q; K] [2C, K] lie inside their workspace vectors.
    unsafe { mm(2 * c, c, kd, ws.y.as_mut_ptr(), CHUNK, false, 0.0, qp, kd, 1, kp, 1, kd, 1.0) };
}

/// One chunk of `c` tokens from token `t0` for value head `h`, on `ws.s` in
/// place, after [`load_keys`].
/// With `keep`, leaves `S_0` in `ws.snap` for snapshots inside the chunk; `L`,
/// `exp(G)` and `V'` stay in the workspace.
#[inline(always)]
fn chunk(ws: &mut Workspace, io: &DeltaViews<'_>, h: usize, t0: usize, c: usize, keep: bool) {
    let (kd, vd) = ws.dims;
    let cc = CHUNK;
    let ws = &mut *ws;
    debug_assert_eq!(ws.clen, c, "load_keys first");
    // load v, g, beta
    for i in 0..c {
        let t = t0 + i;
        io.v.row(io.v.off2(t, h), &mut ws.v[i * vd..(i + 1) * vd]);
        ws.beta[i] = io.beta.get(io.beta.off2(t, h));
        let eg = (io.g.get(io.g.off2(t, h)) as f64).exp();
        ws.gam[i] = if i == 0 { eg } else { ws.gam[i - 1] * eg };
        // L[i, j] = prod_{m=j+1..=i} exp(g_m)
        let (prev, cur) = ws.l.split_at_mut(i * cc);
        cur[i] = 1.0;
        if i > 0 {
            cur[..i].iter_mut().zip(&prev[(i - 1) * cc..(i - 1) * cc + i]).for_each(|(d, p)| *d = p * eg);
        }
    }
    let qp = ws.qk.as_ptr();
    // SAFETY: every operand lies inside its workspace vector (sizes in `ensure`).
    // X = [Q; K] S: rows 0..c Q S, rows c..2c K S
    unsafe { mm(2 * c, vd, kd, ws.x.as_mut_ptr(), vd, false, 0.0, qp, kd, 1, ws.s.as_ptr(), vd, 1, 1.0) };
    // R = V - diag(exp G) K S
    for i in 0..c {
        let gi = ws.gam[i] as f32;
        let (r, v, x) = (&mut ws.r[i * vd..(i + 1) * vd], &ws.v[i * vd..(i + 1) * vd], &ws.x[(c + i) * vd..(c + i + 1) * vd]);
        for ((r, v), x) in r.iter_mut().zip(v).zip(x) {
            *r = v - gi * x;
        }
    }
    // T = (I + strict_lower(diag(beta) K K^T ⊙ L))^-1 by forward substitution in f64:
    // row i of T = e_i - sum_{m<i} M[i, m] T[m, :]
    for i in 0..c {
        let bi = ws.beta[i] as f64;
        let (prev, cur) = ws.t64.split_at_mut(i * cc);
        let cur = &mut cur[..=i];
        cur.fill(0.0);
        cur[i] = 1.0;
        let yrow = &ws.y[(c + i) * cc..(c + i) * cc + i];
        let lrow = &ws.l[i * cc..i * cc + i];
        for m in 0..i {
            let mij = bi * yrow[m] as f64 * lrow[m];
            cur[..=m].iter_mut().zip(&prev[m * cc..m * cc + m + 1]).for_each(|(a, b)| *a -= mij * b);
        }
    }
    // tb = T diag(beta); P = Q K^T ⊙ L (lower, diagonal included)
    for i in 0..c {
        let (tb, p) = (&mut ws.tb[i * cc..i * cc + c], &mut ws.p[i * cc..i * cc + c]);
        let (trow, yrow, lrow) = (&ws.t64[i * cc..i * cc + i + 1], &ws.y[i * cc..i * cc + i + 1], &ws.l[i * cc..i * cc + i + 1]);
        for j in 0..=i {
            tb[j] = (trow[j] * ws.beta[j] as f64) as f32;
            p[j] = (yrow[j] as f64 * lrow[j]) as f32;
        }
        tb[i + 1..].fill(0.0);
        p[i + 1..].fill(0.0);
    }
    // V' = T diag(beta) R ; O = diag(exp G) Q S + (Q K^T ⊙ L) V'
    for i in 0..c {
        let gi = ws.gam[i] as f32;
        for (o, x) in ws.o[i * vd..(i + 1) * vd].iter_mut().zip(&ws.x[i * vd..(i + 1) * vd]) {
            *o = gi * x;
        }
    }
    // Both products have a lower-triangular left operand. A dense GEMM also
    // multiplies its zeros above the diagonal, and 0 * NaN (or 0 * inf) from a
    // later token's row would reach every earlier row: token i's output must
    // depend only on tokens <= i. So a chunk with a non-finite right operand
    // takes the triangular product (rare; finite chunks keep the GEMM).
    if all_finite(&ws.r[..c * vd]) {
        // SAFETY: as above.
        unsafe { mm(c, vd, c, ws.vp.as_mut_ptr(), vd, false, 0.0, ws.tb.as_ptr(), cc, 1, ws.r.as_ptr(), vd, 1, 1.0) };
    } else {
        lower_mm(c, vd, &ws.tb, cc, &ws.r, &mut ws.vp, false);
    }
    if all_finite(&ws.vp[..c * vd]) {
        // SAFETY: as above.
        unsafe { mm(c, vd, c, ws.o.as_mut_ptr(), vd, true, 1.0, ws.p.as_ptr(), cc, 1, ws.vp.as_ptr(), vd, 1, 1.0) };
    } else {
        lower_mm(c, vd, &ws.p, cc, &ws.vp, &mut ws.o, true);
    }
    let scale = io.params.scale;
    for i in 0..c {
        let row = &mut ws.o[i * vd..(i + 1) * vd];
        row.iter_mut().for_each(|x| *x *= scale);
        // SAFETY: row (t0+i, h) of o belongs to this task alone.
        unsafe { io.o.store(io.o.off2(t0 + i, h), row) };
    }
    if keep {
        ws.snap.copy_from_slice(&ws.s);
    }
    // S = exp(G_c) S + (diag(exp(G_c - G)) K)^T V'
    let last = c - 1;
    for j in 0..c {
        let w = ws.l[last * cc + j] as f32;
        let (dst, src) = (&mut ws.kd[j * kd..(j + 1) * kd], &ws.qk[(c + j) * kd..(c + j + 1) * kd]);
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = w * s);
    }
    let alpha = ws.gam[last] as f32;
    // SAFETY: as above.
    unsafe { mm(kd, vd, c, ws.s.as_mut_ptr(), vd, true, alpha, ws.kd.as_ptr(), 1, kd, ws.vp.as_ptr(), vd, 1, 1.0) };
}

/// Whether every value is finite.
#[inline(always)]
fn all_finite(x: &[f32]) -> bool {
    x.iter().fold(true, |ok, v| ok & v.is_finite())
}

/// `dst[i, :] (+)= sum_{j <= i} a[i, j] b[j, :]` over `m` rows of width `n`
/// (`a` with row stride `lda`, `b` and `dst` dense): the product with a
/// lower-triangular `a` that never touches `b`'s rows below row `i` for row `i`.
fn lower_mm(m: usize, n: usize, a: &[f32], lda: usize, b: &[f32], dst: &mut [f32], accumulate: bool) {
    for i in 0..m {
        let row = &mut dst[i * n..(i + 1) * n];
        if !accumulate {
            row.fill(0.0);
        }
        for j in 0..=i {
            let w = a[i * lda + j];
            row.iter_mut().zip(&b[j * n..(j + 1) * n]).for_each(|(d, x)| *d += w * x);
        }
    }
}

/// Columns of a K-major state block processed together by [`steps_head`].
const BW: usize = 128;
/// Columns accumulated in registers at a time (divides [`BW`]) with AVX2:
/// 2 x 4 ymm accumulators.
const ACC: usize = 32;
/// The same with AVX-512: 2 x 4 zmm accumulators, enough independent
/// multiply-add chains to cover their latency. The width changes no bits
/// (each column sums over K in order whatever the width).
const ACC512: usize = 64;

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

/// One request's steps on one head, fused into a single pass over the state:
/// step `i` reads token `tokens[i]`, starts from `parents[i]` (an earlier
/// step, or the state at `src` for `None`) and writes its state to `dsts[i]`
/// and its output row. Decode is one step with `dsts[0] == src`; verify is D
/// steps into the scratch. Every step's state is rounded to `E` before a
/// child reads it, so a chain gives the same bits as sequential decodes.
///
/// # Safety
/// `src` and every `dsts[i]` point to `K*V` elements no other thread touches
/// during the call; `dsts` are pairwise disjoint and disjoint from `src`,
/// except that `dsts[0]` may equal `src` when there is one step. `next` (the
/// head the next task reads, or null) is only prefetched, never read.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn steps_head<E: StateElem>(
    kind: LayoutKind,
    io: &DeltaViews<'_>,
    h: usize,
    tokens: &[usize],
    parents: &[Option<usize>],
    src: *const E,
    dsts: &[*mut E],
    next: *const E,
) {
    STEPS.with(|sc| {
        let mut sc = sc.borrow_mut();
        if simd::has_avx512() {
            // SAFETY: AVX-512F, AVX2 and FMA are present; the pointer contract is the caller's.
            unsafe { steps_head_avx512::<E>(&mut sc, kind, io, h, tokens, parents, src, dsts, next) }
        } else if simd::has_avx2() {
            // SAFETY: AVX2 and FMA are present; the pointer contract is the caller's.
            unsafe { steps_head_avx2::<E>(&mut sc, kind, io, h, tokens, parents, src, dsts, next) }
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { steps_head_body::<E, ACC>(&mut sc, kind, io, h, tokens, parents, src, dsts, next) }
        }
    })
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn steps_head_avx2<E: StateElem>(
    sc: &mut StepScratch,
    kind: LayoutKind,
    io: &DeltaViews<'_>,
    h: usize,
    tokens: &[usize],
    parents: &[Option<usize>],
    src: *const E,
    dsts: &[*mut E],
    next: *const E,
) {
    // SAFETY: forwarded from the caller.
    unsafe { steps_head_body::<E, ACC>(sc, kind, io, h, tokens, parents, src, dsts, next) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn steps_head_avx512<E: StateElem>(
    sc: &mut StepScratch,
    kind: LayoutKind,
    io: &DeltaViews<'_>,
    h: usize,
    tokens: &[usize],
    parents: &[Option<usize>],
    src: *const E,
    dsts: &[*mut E],
    next: *const E,
) {
    // SAFETY: forwarded from the caller.
    unsafe { steps_head_body::<E, ACC512>(sc, kind, io, h, tokens, parents, src, dsts, next) }
}

/// A decode (one step, in place) on a K-major head, reading the state where it
/// lies: the general path's f32 copy of the block does not fit L1 and costs an
/// L2 write and two L2 reads per element, which is what bounded decode. Same
/// arithmetic in the same order as the general path, so a decode and a verify
/// step give the same bits.
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
    let mut c0 = 0;
    while c0 < vd {
        let w = BW.min(vd - c0);
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
        for (kk, &a) in kv.iter().enumerate() {
            // SAFETY: row kk, columns c0..c0+w of the head; no other reference to it is live.
            let row = unsafe { std::slice::from_raw_parts_mut(st.add(kk * vd + c0), w) };
            E::update_row(row, d, a, &sk[..w]);
        }
        c0 += w;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn steps_head_body<E: StateElem, const A: usize>(
    sc: &mut StepScratch,
    kind: LayoutKind,
    io: &DeltaViews<'_>,
    h: usize,
    tokens: &[usize],
    parents: &[Option<usize>],
    src: *const E,
    dsts: &[*mut E],
    next: *const E,
) {
    let (kd, vd) = (io.dims.head_k_dim, io.dims.head_v_dim);
    let n = tokens.len();
    let grow = |x: &mut Vec<f32>, len: usize| {
        if x.len() < len {
            x.resize(len, 0.0);
        }
    };
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
    for (i, &t) in tokens.iter().enumerate() {
        io.load_qk(t, h, &mut sc.q[i * kd..(i + 1) * kd], &mut sc.k[i * kd..(i + 1) * kd]);
        io.v.row(io.v.off2(t, h), &mut sc.v[i * vd..(i + 1) * vd]);
        sc.beta[i] = io.beta.get(io.beta.off2(t, h));
        sc.d[i] = (io.g.get(io.g.off2(t, h)) as f64).exp() as f32;
        sc.kq[i] = simd::dot(&sc.q[i * kd..(i + 1) * kd], &sc.k[i * kd..(i + 1) * kd]);
    }
    let scale = io.params.scale;
    // verify: scratch states are written once, so bypass the cache (f32 state)
    let stream = !E::NARROW && (n > 1 || !std::ptr::eq(dsts[0], src));
    let bytes = kd * vd * std::mem::size_of::<E>();
    match kind {
        LayoutKind::KMajor if n == 1 && std::ptr::eq(dsts[0], src) => {
            let mut pf = simd::Prefetch::new(next, bytes, vd.div_ceil(A) * kd);
            // SAFETY: one step in place on the head at `dsts[0]` (the caller's contract).
            unsafe { decode_kmajor::<E, A>(sc, kd, vd, scale, dsts[0], &mut pf) };
        }
        LayoutKind::KMajor => {
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
                            for j in 0..A {
                                a1[j] = prow[j].mul_add(a, a1[j]);
                                a2[j] = prow[j].mul_add(b, a2[j]);
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
                    for kk in 0..kd {
                        let (prow, orow) = (&parent[kk * BW..kk * BW + w], &mut out[kk * BW..kk * BW + w]);
                        let a = kv[kk];
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
    for (i, &t) in tokens.iter().enumerate() {
        // SAFETY: output row (t, h) belongs to this task alone.
        unsafe { io.o.store(io.o.off2(t, h), &sc.o[i * vd..(i + 1) * vd]) };
    }
}
