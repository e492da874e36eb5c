//! DESIGN §5.1-3: extend against the oracle (with and without initial
//! state, snapshots), an extend split anywhere against one extend, and an
//! extend then decodes against one extend of the whole.

use super::{chunk_index, init_states, scatter, sh, Ctx, Shape};
use crate::gen::{cu_from_lens, to_f64, DeltaInputs};
use crate::harness::{Batch, Bench};
use deltanet_core::{tolerance, DecodeBatch, ExtendBatch, KernelDispatcher, MambaStatePool, Result, Slot, Snapshot};

pub(crate) fn extend_oracle<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let cases: Vec<(Shape, Vec<usize>, bool)> = vec![
        (sh(1, 1, 16, 16, false), vec![1, 63, 64, 65], false),
        (sh(1, 2, 32, 48, false), vec![65, 1, 130], false),
        (sh(2, 4, 48, 32, true), vec![64, 63, 1], false),
        (sh(1, 4, 128, 64, false), vec![65, 129], false),
        (sh(2, 2, 64, 128, false), vec![100], false),
        (sh(2, 8, 16, 48, false), vec![70, 5], false),
        (sh(2, 8, 16, 48, true), vec![70, 5], false),
        (sh(1, 2, 16, 32, false), vec![4096, 1, 63, 64, 65, 1000], true),
        // Qwen3.5 / Qwen3-Next head dims
        (sh(1, 4, 128, 128, true), vec![65, 63, 1], false),
        (sh(2, 4, 128, 128, false), vec![1000, 64], true),
    ];
    for (ci, (shape, lens, long)) in cases.into_iter().enumerate() {
        let name = format!("{} lens {:?}", shape.name(), lens);
        if (long && !ctx.opts.long) || !ctx.opts.wants(&name) {
            continue;
        }
        let d = make();
        let dims = shape.dims()?;
        if ctx.outside_limits(d.capabilities(), &name, &dims) {
            continue;
        }
        let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
        let n = lens.len();
        let nsnap = if n >= 2 { 2 } else { 1 };
        let mut b = Bench::new(&d, dims, n + nsnap, sd, None, dt)?;
        let seed = ctx.seed(&[ci as u64]);
        let slots = b.pool.alloc(n)?;
        let snap_slots = b.pool.alloc(nsnap)?;
        let all: Vec<Slot> = slots.iter().chain(&snap_slots).copied().collect();
        b.randomize(&all, seed)?;
        let init: Vec<bool> = (0..n).map(|j| (j + ci) % 2 == 0).collect();
        let before = b.states(&slots)?;
        let layer0 = b.layer0(&all)?;
        let cu = cu_from_lens(&lens);
        let inp = DeltaInputs::random(&dims, cu[n], dt, seed ^ 1);
        // snapshots: sequence 0 after min(len, 64) tokens, the last sequence at its end
        let mut snaps = vec![Snapshot { seq: 0, position: lens[0].min(64), slot: snap_slots[0] }];
        if nsnap == 2 {
            snaps.push(Snapshot { seq: n - 1, position: lens[n - 1], slot: snap_slots[1] });
        }
        let batch = ExtendBatch::new(&b.pool, &cu, &slots, &init)?.with_snapshots(&b.pool, &snaps)?;
        let o = b.run(Batch::Extend(&batch), &inp)?;
        let per = dims.state_elems();
        let init_st = init_states(per, &before, &init);
        let r = inp.oracle(&b.params, &cu, Some(&init_st));
        let tol = ctx.tol(dt, sd, *lens.iter().max().unwrap());
        ctx.ratio(&format!("{name} init {init:?}: outputs"), &o, &r.o, tol);
        ctx.ratio(&format!("{name} init {init:?}: final states"), &b.states(&slots)?, &r.final_state, tol);
        for (si, s) in snaps.iter().enumerate() {
            let part = inp.slice(cu[s.seq]..cu[s.seq] + s.position);
            let pr = part.oracle(&b.params, &[0, s.position], Some(&init_st[s.seq * per..(s.seq + 1) * per]));
            ctx.ratio(&format!("{name}: snapshot {si} (seq {} at {})", s.seq, s.position), &b.state(s.slot)?, &pr.final_state, tol);
        }
        ctx.exact(&format!("{name}: layer 0 untouched"), b.layer0(&all)? == layer0, String::new());
    }
    Ok(())
}

pub(crate) fn split_extend<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
    let mut rs = crate::gen::rng(ctx.seed(&[999]));
    let r1 = rand::Rng::gen_range(&mut rs, 2..100usize);
    let r2 = rand::Rng::gen_range(&mut rs, r1 + 1..190usize);
    let splits: Vec<Vec<usize>> = vec![vec![1], vec![63], vec![64], vec![65], vec![64, 128], vec![1, 64, 65], vec![r1, r2]];
    let shapes = [sh(1, 2, 32, 16, false), sh(2, 4, 16, 48, true), sh(1, 2, 128, 128, false)];
    for (si, shape) in shapes.iter().enumerate() {
        let dims = shape.dims()?;
        if ctx.outside_limits(d.capabilities(), &shape.name(), &dims) {
            continue;
        }
        let lens = [200usize, 193];
        let cu = cu_from_lens(&lens);
        let seed = ctx.seed(&[si as u64]);
        let inp = DeltaInputs::random(&dims, cu[2], dt, seed ^ 3);
        let init = [true, false];
        // one extend
        let mut whole = Bench::new(&d, dims, 2, sd, None, dt)?;
        let ws = whole.pool.alloc(2)?;
        whole.randomize(&ws, seed)?;
        let before = whole.states(&ws)?;
        let batch = ExtendBatch::new(&whole.pool, &cu, &ws, &init)?;
        let o_whole = whole.run(Batch::Extend(&batch), &inp)?;
        let st_whole = whole.states(&ws)?;
        let r = inp.oracle(&whole.params, &cu, Some(&init_states(dims.state_elems(), &before, &init)));
        for sp in &splits {
            let name = format!("{} lens {:?} split at {:?}", shape.name(), lens, sp);
            if !ctx.opts.wants(&name) {
                continue;
            }
            let mut b = Bench::new(&d, dims, 2, sd, None, dt)?;
            let slots = b.pool.alloc(2)?;
            b.randomize(&slots, seed)?;
            let per = dims.num_v_heads * dims.head_v_dim;
            let mut o = vec![0.0f32; cu[2] * per];
            let mut bounds = vec![0];
            bounds.extend(sp);
            for (j, &a) in bounds.iter().enumerate() {
                let end = bounds.get(j + 1).copied().unwrap_or(usize::MAX);
                let (idx, clens) = chunk_index(&cu, a, &[end, end]);
                let flags: Vec<bool> = if j == 0 { init.to_vec() } else { vec![true, true] };
                let batch = ExtendBatch::new(&b.pool, &cu_from_lens(&clens), &slots, &flags)?;
                let oc = b.run(Batch::Extend(&batch), &inp.gather(&idx))?;
                scatter(&mut o, &oc, &idx, per);
            }
            let st = b.states(&slots)?;
            if sp.iter().all(|&x| x % 64 == 0) {
                ctx.bits(&format!("{name}: outputs == one extend"), &o, &o_whole);
                ctx.bits(&format!("{name}: states == one extend"), &st, &st_whole);
            } else {
                let tol = ctx.tol(dt, sd, 200);
                ctx.ratio(&format!("{name}: outputs vs oracle"), &o, &r.o, tol);
                ctx.ratio(&format!("{name}: states vs oracle"), &st, &r.final_state, tol);
                ctx.ratio(&format!("{name}: outputs vs one extend"), &o, &to_f64(&o_whole), tolerance::CROSS_FACTOR * tol);
                ctx.ratio(&format!("{name}: states vs one extend"), &st, &to_f64(&st_whole), tolerance::CROSS_FACTOR * tol);
            }
        }
    }
    Ok(())
}

pub(crate) fn extend_decode<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let shapes = [sh(1, 1, 16, 16, false), sh(2, 4, 32, 48, false), sh(1, 2, 128, 64, true)];
    let lens = [70usize, 5, 64];
    let ndec = 3;
    for (si, shape) in shapes.iter().enumerate() {
        let name = format!("{} lens {:?} last {ndec} decoded", shape.name(), lens);
        if !ctx.opts.wants(&name) {
            continue;
        }
        let d = make();
        let dims = shape.dims()?;
        if ctx.outside_limits(d.capabilities(), &name, &dims) {
            continue;
        }
        let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
        let seed = ctx.seed(&[si as u64]);
        let cu = cu_from_lens(&lens);
        let inp = DeltaInputs::random(&dims, cu[3], dt, seed ^ 5);
        let init = [true, false, true];
        let per = dims.num_v_heads * dims.head_v_dim;
        // one extend of the whole
        let mut whole = Bench::new(&d, dims, 3, sd, None, dt)?;
        let ws = whole.pool.alloc(3)?;
        whole.randomize(&ws, seed)?;
        let before = whole.states(&ws)?;
        let o_whole = whole.run(Batch::Extend(&ExtendBatch::new(&whole.pool, &cu, &ws, &init)?), &inp)?;
        let st_whole = whole.states(&ws)?;
        let r = inp.oracle(&whole.params, &cu, Some(&init_states(dims.state_elems(), &before, &init)));
        // extend the prefixes, then decode the rest together
        let mut b = Bench::new(&d, dims, 3, sd, None, dt)?;
        let slots = b.pool.alloc(3)?;
        b.randomize(&slots, seed)?;
        let prefix: Vec<usize> = lens.iter().map(|l| l - ndec).collect();
        let (idx, plens) = chunk_index(&cu, 0, &prefix);
        let mut o = vec![0.0f32; cu[3] * per];
        let oc = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu_from_lens(&plens), &slots, &init)?), &inp.gather(&idx))?;
        scatter(&mut o, &oc, &idx, per);
        let dec = DecodeBatch::new(&b.pool, &slots)?;
        for t in 0..ndec {
            let idx: Vec<usize> = (0..3).map(|s| cu[s] + prefix[s] + t).collect();
            let oc = b.run(Batch::Decode(&dec), &inp.gather(&idx))?;
            scatter(&mut o, &oc, &idx, per);
        }
        let tol = ctx.tol(dt, sd, 70);
        let st = b.states(&slots)?;
        ctx.ratio(&format!("{name}: outputs vs oracle"), &o, &r.o, tol);
        ctx.ratio(&format!("{name}: states vs oracle"), &st, &r.final_state, tol);
        ctx.ratio(&format!("{name}: outputs vs one extend"), &o, &to_f64(&o_whole), tolerance::CROSS_FACTOR * tol);
        ctx.ratio(&format!("{name}: states vs one extend"), &st, &to_f64(&st_whole), tolerance::CROSS_FACTOR * tol);
    }
    Ok(())
}
