//! The multi-step K-major pass (verify, replay verify, replay commit) over
//! narrow column groups: the delta rule's columns are independent (column j
//! of a step's state needs only column j of its parent, k, v_j, g and beta),
//! so every step of a request runs on one group of `A` columns before the
//! next group is touched. A group's state (`[K, A]` per step) stays in L1/L2
//! while all D steps use it, so the head's state is read from memory once and
//! written (where written) once. Each step's state row is produced and, in
//! the same pass, folded into its first child's `S^T k` / `S^T q`, so a chain
//! costs one pass per step instead of two; a step whose state nobody reads
//! (a replay verify's leaf) is not computed at all, and a run with no outputs
//! (a replay commit) skips `S^T q`. Per column the arithmetic and its order
//! are the decode's ([`super::decode_kmajor`]), so the bits are the same.

use super::StepScratch;
use crate::scratch::grow;
use crate::simd::{self, StateElem};

/// The first child of step `i` (children come after their parent): its sums
/// are accumulated in step `i`'s own pass.
fn first_child(parents: &[Option<usize>], i: usize) -> Option<usize> {
    (i + 1..parents.len()).find(|&c| parents[c] == Some(i))
}

/// All steps of one request on one K-major head, `A` columns at a time (see
/// the module doc). `Q`: the run has outputs (`S^T q` is accumulated).
///
/// # Safety
/// [`super::steps_head`]'s contract; every parent index is smaller than its
/// child's; `kind` is K-major.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn steps_kmajor_columns<E: StateElem, const A: usize, const Q: bool>(
    sc: &mut StepScratch,
    (kd, vd, scale): (usize, usize, f32),
    parents: &[Option<usize>],
    src: *const E,
    dsts: &[*mut E],
    stream: bool,
    pf: &mut simd::Prefetch,
) {
    let n = parents.len();
    // per step: S^T k then S^T q of the current group, A columns each
    grow(&mut sc.acc, 2 * n * A);
    grow(&mut sc.blk, n * kd * A);
    let mut c0 = 0;
    while c0 < vd {
        let w = A.min(vd - c0);
        for i in (0..n).filter(|&i| parents[i].is_none()) {
            // SAFETY: rows 0..kd, columns c0..c0+w of the source head.
            let (a1, a2) =
                unsafe { sums_from_src::<E, A, Q>(src, vd, c0, w, &sc.k[i * kd..(i + 1) * kd], &sc.q[i * kd..(i + 1) * kd], pf) };
            sc.acc[2 * i * A..(2 * i + 1) * A].copy_from_slice(&a1);
            sc.acc[(2 * i + 1) * A..(2 * i + 2) * A].copy_from_slice(&a2);
        }
        for i in 0..n {
            let (beta, d, kq) = (sc.beta[i], sc.d[i], sc.kq[i]);
            let mut u = [0f32; A];
            {
                let (sk, sq) = sc.acc[2 * i * A..(2 * i + 2) * A].split_at(A);
                let vrow = &sc.v[i * vd + c0..i * vd + c0 + w];
                let orow = &mut sc.o[i * vd + c0..i * vd + c0 + w];
                for j in 0..w {
                    u[j] = beta * (vrow[j] - d * sk[j]);
                    orow[j] = scale * (d * sq[j] + u[j] * kq);
                }
            }
            let (dst, fc) = (dsts[i], first_child(parents, i));
            if fc.is_none() && dst.is_null() {
                // a leaf of a replay verify: its state is read by nobody
                continue;
            }
            let (mut a1, mut a2) = ([0f32; A], [0f32; A]);
            let (done, rest) = sc.blk.split_at_mut(i * kd * A);
            let out = &mut rest[..kd * A];
            let kv = &sc.k[i * kd..(i + 1) * kd];
            let (kc, qc) = match fc {
                Some(c) => (&sc.k[c * kd..(c + 1) * kd], &sc.q[c * kd..(c + 1) * kd]),
                None => (kv, kv),
            };
            for kk in 0..kd {
                // the parent's row (the source head's, or an earlier step's block), by
                // value so that it stays in registers
                let mut row = [0f32; A];
                match parents[i] {
                    None => {
                        // SAFETY: row kk, columns c0..c0+w of the source head; a destination
                        // aliasing it (the last step) is written below, after this read.
                        let s = unsafe { std::slice::from_raw_parts(src.add(kk * vd + c0), w) };
                        if let Ok(s) = <&[E; A]>::try_from(s) {
                            for j in 0..A {
                                row[j] = s[j].ld();
                            }
                        } else {
                            for j in 0..w {
                                row[j] = s[j].ld();
                            }
                        }
                    }
                    Some(p) => row = *<&[f32; A]>::try_from(&done[(p * kd + kk) * A..(p * kd + kk + 1) * A]).expect("A columns"),
                }
                let a = kv[kk];
                for j in 0..A {
                    row[j] = E::st(d.mul_add(row[j], a * u[j])).ld();
                }
                if fc.is_some() {
                    *<&mut [f32; A]>::try_from(&mut out[kk * A..(kk + 1) * A]).expect("A columns") = row;
                    let (b, c) = (kc[kk], qc[kk]);
                    for j in 0..A {
                        a1[j] = row[j].mul_add(b, a1[j]);
                        if Q {
                            a2[j] = row[j].mul_add(c, a2[j]);
                        }
                    }
                }
                if !dst.is_null() {
                    // a copy, so that `row` itself is never borrowed (and stays in registers)
                    let kept = row;
                    // SAFETY: row kk, columns c0..c0+w of step i's destination head, which
                    // no other step writes; its source row (if aliased) is already read.
                    unsafe { store_row(dst.add(kk * vd + c0), &kept[..w], stream) };
                }
            }
            let Some(fc) = fc else { continue };
            sc.acc[2 * fc * A..(2 * fc + 1) * A].copy_from_slice(&a1);
            sc.acc[(2 * fc + 1) * A..(2 * fc + 2) * A].copy_from_slice(&a2);
            // further children (a tree's siblings) sum over the kept block
            for c in (fc + 1..n).filter(|&c| parents[c] == Some(i)) {
                let (kc, qc) = (&sc.k[c * kd..(c + 1) * kd], &sc.q[c * kd..(c + 1) * kd]);
                let (a1, a2) = sums_from_block::<A, Q>(&sc.blk[i * kd * A..(i + 1) * kd * A], kc, qc);
                sc.acc[2 * c * A..(2 * c + 1) * A].copy_from_slice(&a1);
                sc.acc[(2 * c + 1) * A..(2 * c + 2) * A].copy_from_slice(&a2);
            }
        }
        c0 += w;
    }
}

/// `S^T k` and (with `Q`) `S^T q` over columns c0..c0+w of the source head,
/// summed over K in order; columns past `w` read as zeros.
///
/// # Safety
/// `src` holds `kd` rows of `vd` readable elements; `c0 + w <= vd`.
#[inline(always)]
unsafe fn sums_from_src<E: StateElem, const A: usize, const Q: bool>(
    src: *const E,
    vd: usize,
    c0: usize,
    w: usize,
    kv: &[f32],
    qv: &[f32],
    pf: &mut simd::Prefetch,
) -> ([f32; A], [f32; A]) {
    let (mut a1, mut a2) = ([0f32; A], [0f32; A]);
    for (kk, (&a, &b)) in kv.iter().zip(qv).enumerate() {
        pf.step();
        // SAFETY: row kk, columns c0..c0+w of the source head (the caller's contract).
        let row = unsafe { std::slice::from_raw_parts(src.add(kk * vd + c0), w) };
        if let Ok(row) = <&[E; A]>::try_from(row) {
            for j in 0..A {
                let p = row[j].ld();
                a1[j] = p.mul_add(a, a1[j]);
                if Q {
                    a2[j] = p.mul_add(b, a2[j]);
                }
            }
        } else {
            for j in 0..w {
                let p = row[j].ld();
                a1[j] = p.mul_add(a, a1[j]);
                if Q {
                    a2[j] = p.mul_add(b, a2[j]);
                }
            }
        }
    }
    (a1, a2)
}

/// `S^T k` and (with `Q`) `S^T q` over a kept `[K, A]` step block.
#[inline(always)]
fn sums_from_block<const A: usize, const Q: bool>(blk: &[f32], kv: &[f32], qv: &[f32]) -> ([f32; A], [f32; A]) {
    let (mut a1, mut a2) = ([0f32; A], [0f32; A]);
    for (row, (&a, &b)) in blk.chunks_exact(A).zip(kv.iter().zip(qv)) {
        for j in 0..A {
            a1[j] = row[j].mul_add(a, a1[j]);
            if Q {
                a2[j] = row[j].mul_add(b, a2[j]);
            }
        }
    }
    (a1, a2)
}

/// Writes one state row segment: non-temporal when `stream` (f32 state,
/// written once), else rounded to `E` in place.
///
/// # Safety
/// `dst` points to `row.len()` writable elements nobody else touches.
#[inline(always)]
unsafe fn store_row<E: StateElem>(dst: *mut E, row: &[f32], stream: bool) {
    // SAFETY: with `stream`, E is f32 (the caller's flag); the range is the caller's.
    if stream && unsafe { simd::stream_f32(dst as *mut f32, row) } {
        return;
    }
    // SAFETY: the caller's range.
    let o = unsafe { std::slice::from_raw_parts_mut(dst, row.len()) };
    for (o, &r) in o.iter_mut().zip(row) {
        // exact: `r` is already rounded to E
        *o = E::st(r);
    }
}
