//! The CPU kernels of [`SpecMode::Replay`](deltanet_core::SpecMode::Replay):
//! verify computes every draft's conv and delta-rule output from the slot's
//! state without writing any state, recording per draft its raw conv input
//! (the pool's `windows` buffer) and the k, v, g, beta the delta rule used
//! (the `scratch` buffer); commit replays the accepted path on the slot's
//! state in place with the decode's arithmetic ([`steps_head`]) and shifts
//! the path's inputs into the conv state. Bitwise: a replayed path leaves the
//! state its decodes leave, and replay verify's outputs are scratch verify's.

use crate::conv::{load_conv, store_conv};
use crate::io::RawBuf;
use crate::steps::{steps_head, StepInputs};
use crate::{delta_views, main_head, with_state_type, CpuDispatcher};
use deltanet_core::*;
use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Per-thread draft windows of one channel block, `[D, n, W-1]` in the
    /// conv dtype: what the scratch mode keeps in the pool, kept here instead.
    static WINDOWS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl<L: StateLayout> CpuDispatcher<L> {
    /// [`Kernels::run_conv_verify_replay`]: the scratch mode's conv verify
    /// (same loads, steps and stores, so the same bits) with the draft windows
    /// in thread-local memory, plus each draft's raw input recorded in the pool.
    pub(crate) fn conv_verify_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        let mut io = call.into_io();
        pool.checked_parts(ticket, |parts| {
            let inputs = RawBuf::new(parts.windows.ok_or(Error::NoSpeculativeBuffers)?.bytes_mut());
            let conv = RawBuf::new(parts.conv.bytes_mut());
            let (cdt, w1, es, dn) = (g.config.conv_dtype, dims.conv_state_len(), g.config.conv_dtype.size(), batch.draft());
            self.conv_blocks(&dims, &mut io, |blk| {
                let (blk_off, win) = (blk.c0 * w1 * es, blk.n * w1 * es);
                WINDOWS.with(|local| {
                    let mut local = local.borrow_mut();
                    if local.len() < dn * win {
                        local.resize(dn * win, 0);
                    }
                    let windows = RawBuf::new(&mut local[..dn * win]);
                    for (i, slot) in batch.slots().iter().enumerate() {
                        let slot = slot.index();
                        for t in 0..dn {
                            match batch.parent(i, t) {
                                // a chain's step t - 1 is still in the window, exactly as stored (f32)
                                Some(p) if p + 1 == t && cdt == DType::F32 => {}
                                None => blk.load(&conv, cdt, g.conv_offset(layer, slot) + blk_off),
                                Some(p) => blk.load(&windows, cdt, p * win),
                            }
                            blk.step(i * dn + t);
                            blk.store(&windows, cdt, t * win);
                            blk.store_input(i * dn + t, &inputs, cdt, g.window_offset(layer, slot, t) + blk.c0 * es);
                        }
                    }
                })
            })
        })
    }

    /// [`Kernels::run_verify_replay`]: the scratch mode's verify pass with no
    /// state written ([`steps_head`] with null destinations; every step's
    /// state lives only in the per-thread block its children read), each
    /// step's k, v, g, beta recorded per value head.
    pub(crate) fn verify_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        let mut io = call.into_io();
        let views = delta_views(&mut io, dims)?;
        pool.checked_parts(ticket, |parts| {
            let records = RawBuf::new(parts.scratch.ok_or(Error::NoSpeculativeBuffers)?.bytes_mut());
            let temporal = RawBuf::new(parts.temporal.bytes_mut());
            let (hv, dn, rec) = (dims.num_v_heads, batch.draft(), g.config.replay_record_elems());
            with_state_type!(g.config.state_dtype, E => self.install(|| {
                let lists = || (Vec::new(), Vec::new(), Vec::<*mut E>::new(), Vec::<*mut f32>::new());
                (0..batch.num_seqs() * hv).into_par_iter().for_each_init(lists, |(tokens, parents, dsts, recs), task| {
                    let (i, h) = (task / hv, task % hv);
                    let slot = batch.slots()[i].index();
                    tokens.clear();
                    tokens.extend((0..dn).map(|t| i * dn + t));
                    parents.clear();
                    parents.extend((0..dn).map(|t| batch.parent(i, t)));
                    dsts.clear();
                    dsts.resize(dn, std::ptr::null_mut());
                    recs.clear();
                    recs.extend((0..dn).map(|t| records.typed::<f32>(g.scratch_offset(layer, slot, t) + h * rec * 4, rec)));
                    let src = main_head::<E>(&temporal, &g, layer, batch.slots(), task);
                    let next = main_head::<E>(&temporal, &g, layer, batch.slots(), task + 1);
                    // SAFETY: the main state of (slot, head) is only read; this task alone
                    // writes the records of (slot, head); no state is written; `next` is
                    // only prefetched.
                    unsafe { steps_head::<E>(L::KIND, StepInputs::Call { io: &views, tokens, record: recs }, h, parents, src, dsts, next) };
                })
            }));
            Ok(())
        })
    }

    /// [`Kernels::run_commit_replay`]: per (request, value head), the recorded
    /// steps of the path root → `a` in one pass over the head's state, only
    /// the last step's state written (in place); per request, the conv state
    /// becomes the last W-1 of (conv state, path inputs); then both are copied
    /// to the snapshot slot when one is named.
    pub(crate) fn commit_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        let (ticket, layer, batch, g) = (call.ticket(), call.layer(), call.batch(), *call.geometry());
        let dims = g.config.dims;
        pool.checked_parts(ticket, |parts| {
            // skipped requests (accepted `None`) are not among the commits: their slots stay as they are
            let commits: Vec<Commit> = batch.commits().collect();
            let slots: Vec<Slot> = commits.iter().map(|c| c.slot).collect();
            let paths: Vec<Vec<usize>> = commits.iter().map(|c| parts.replay_path(layer, c.slot.index(), c.step)).collect();
            let records = RawBuf::new(parts.scratch.ok_or(Error::NoSpeculativeBuffers)?.bytes_mut());
            let inputs = RawBuf::new(parts.windows.ok_or(Error::NoSpeculativeBuffers)?.bytes_mut());
            let temporal = RawBuf::new(parts.temporal.bytes_mut());
            let conv = RawBuf::new(parts.conv.bytes_mut());
            let (hv, rec) = (dims.num_v_heads, g.config.replay_record_elems());
            with_state_type!(g.config.state_dtype, E => self.install(|| {
                let lists = || (Vec::new(), Vec::<*mut E>::new(), Vec::<*const f32>::new());
                (0..slots.len() * hv).into_par_iter().for_each_init(lists, |(parents, dsts, recs), task| {
                    let (i, h) = (task / hv, task % hv);
                    let (slot, path) = (slots[i].index(), &paths[i]);
                    let st = main_head::<E>(&temporal, &g, layer, &slots, task);
                    parents.clear();
                    parents.extend((0..path.len()).map(|j| j.checked_sub(1)));
                    dsts.clear();
                    dsts.resize(path.len() - 1, std::ptr::null_mut());
                    dsts.push(st);
                    recs.clear();
                    recs.extend(path.iter().map(|&t| records.typed::<f32>(g.scratch_offset(layer, slot, t) + h * rec * 4, rec) as *const f32));
                    let next = main_head::<E>(&temporal, &g, layer, &slots, task + 1);
                    // SAFETY: (slot, head) of the main state is this task's alone (slots are
                    // distinct); only the last step writes, in place; the records are only
                    // read; `next` is only prefetched.
                    let inputs = StepInputs::Recorded { kd: dims.head_k_dim, vd: dims.head_v_dim, records: recs };
                    unsafe { steps_head::<E>(L::KIND, inputs, h, parents, st, dsts, next) };
                })
            }));
            let (c, w1) = (dims.conv_dim(), dims.conv_state_len());
            let (mut window, mut x) = (vec![0f32; c * w1], vec![0f32; c]);
            for (slot, path) in slots.iter().zip(&paths) {
                shift_window(&conv, &inputs, &g, layer, slot.index(), path, (&mut window, &mut x));
            }
            for Commit { slot, snapshot, .. } in &commits {
                if let Some(snap) = snapshot {
                    let (s, d) = (g.temporal_offset(layer, slot.index()), g.temporal_offset(layer, snap.index()));
                    parts.memory.copy_within(parts.temporal, s, d, g.state_bytes())?;
                    let (s, d) = (g.conv_offset(layer, slot.index()), g.conv_offset(layer, snap.index()));
                    parts.memory.copy_within(parts.conv, s, d, g.conv_bytes())?;
                }
            }
            Ok(())
        })
    }
}

/// The conv state of `slot` becomes the last W-1 of (its W-1 inputs, the
/// recorded inputs of `path`), channels-first, in the conv dtype: values are
/// moved, never recomputed, so it equals what the path's decodes leave.
fn shift_window(
    conv: &RawBuf,
    inputs: &RawBuf,
    g: &PoolGeometry,
    layer: usize,
    slot: usize,
    path: &[usize],
    (window, x): (&mut [f32], &mut [f32]),
) {
    let dims = g.config.dims;
    let (c, w1, cdt) = (dims.conv_dim(), dims.conv_state_len(), g.config.conv_dtype);
    let m = path.len();
    load_conv(conv, cdt, g.conv_offset(layer, slot), window);
    for ch in 0..c {
        window[ch * w1..(ch + 1) * w1].copy_within(m.min(w1).., 0);
    }
    // the newest min(m, W-1) inputs of the path fill the window's tail, oldest first
    for (j, &t) in path[m.saturating_sub(w1)..].iter().enumerate() {
        load_conv(inputs, cdt, g.window_offset(layer, slot, t), x);
        let col = w1 - m.min(w1) + j;
        for ch in 0..c {
            window[ch * w1 + col] = x[ch];
        }
    }
    store_conv(conv, cdt, g.conv_offset(layer, slot), window);
}
