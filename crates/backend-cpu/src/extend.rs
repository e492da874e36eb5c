//! The chunked extend of DESIGN §2: per (sequence, key head), chunks of
//! [`CHUNK`] tokens aligned to the sequence's extend start, dense per-chunk
//! products through [`crate::gemm`], snapshots at any position from the
//! chunk's `V'`, and the per-thread workspace they run in.

use crate::delta_views::DeltaViews;
use crate::gemm::{lower_mm, mm};
use crate::io::RawBuf;
use crate::simd::{self, StateElem};
use crate::state_io::{load_state, store_state};
use crate::steps::{steps_head, StepInputs};
use deltanet_core::{ExtendBatch, LayoutKind, PoolGeometry};
use std::cell::RefCell;

/// Chunk length of the chunked extend.
pub const CHUNK: usize = 64;

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
    unsafe { steps_head::<f32>(kind, StepInputs::Call { io, tokens: &[t], record: &[] }, h, &[None], p, &[p], std::ptr::null()) };
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
