//! DESIGN §5.4, in every speculative mode the backend implements: verify of
//! D drafts (chains and trees) leaves the main state untouched, the commit of
//! every accepted step equals decoding it, a commit that skips a request
//! leaves it (and its verify) as it was, and a commit needs a current verify.
//! A backend with both modes also gets replay compared with scratch and with
//! decoding the accepted tokens one by one, bitwise.

use super::{path, sh, Ctx};
use crate::gen::{cu_from_lens, DeltaInputs};
use crate::harness::{Batch, Bench};
use deltanet_core::{
    CommitBatch, DecodeBatch, Error, ExtendBatch, HostState, KernelDispatcher, MambaStatePool, Result, SpecMode, VerifyBatch,
};

const TREES: [(&str, [i64; 12]); 2] =
    [("chains", [-1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2]), ("trees", [-1, 0, 1, 2, -1, 0, 0, 1, -1, -1, 1, 2])];

pub(crate) fn verify_commit<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let modes = make().capabilities().spec_modes.clone();
    for &mode in &modes {
        against_oracle(ctx, make, mode)?;
        stale_verify(ctx, make, mode)?;
    }
    if modes.contains(&SpecMode::Scratch) && modes.contains(&SpecMode::Replay) {
        replay_bitwise(ctx, make)?;
    }
    Ok(())
}

fn against_oracle<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D, mode: SpecMode) -> Result<()> {
    let draft = 4usize;
    for (si, shape) in [sh(1, 2, 32, 16, false), sh(2, 2, 16, 48, true), sh(1, 4, 64, 32, false)].iter().enumerate() {
        for (ti, (kind, parents)) in TREES.iter().enumerate() {
            let name = format!("{} D={draft} {kind} ({mode} mode)", shape.name());
            if !ctx.opts.wants(&name) {
                continue;
            }
            let d = make();
            let dims = shape.dims()?;
            if ctx.outside_limits(d.capabilities(), &name, &dims) {
                continue;
            }
            if d.capabilities().max_draft_tokens.is_some_and(|m| m < draft) {
                ctx.exact(&format!("{name}: skipped (backend allows fewer draft tokens)"), true, String::new());
                continue;
            }
            let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
            let seed = ctx.seed(&[si as u64, ti as u64]);
            let mut b = Bench::speculative(&d, dims, 4, sd, draft, mode, dt)?;
            let slots = b.pool.alloc(3)?;
            let snap = b.pool.alloc(1)?[0];
            b.randomize(&slots, seed)?;
            // a prefix extend so the verified state is a kernel-made one
            let lens = [5usize, 64, 1];
            let cu = cu_from_lens(&lens);
            let pre = DeltaInputs::random(&dims, cu[3], dt, seed ^ 7);
            b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu, &slots, &[true, false, true])?), &pre)?;
            let s0 = b.states(&slots)?;
            let saved: Vec<HostState> = slots.iter().map(|&s| b.pool.export(s)).collect::<Result<_>>()?;
            let drafts = DeltaInputs::random(&dims, 3 * draft, dt, seed ^ 11);
            let vb = VerifyBatch::tree(&b.pool, &slots, parents)?;
            let o = b.run(Batch::Verify(&vb), &drafts)?;
            let after: Vec<HostState> = slots.iter().map(|&s| b.pool.export(s)).collect::<Result<_>>()?;
            ctx.exact(&format!("{name}: main state untouched by verify"), after == saved, String::new());
            // expected per step: the path from the slot's state
            let (per_o, per_s) = (dims.num_v_heads * dims.head_v_dim, dims.state_elems());
            let mut o_ref = vec![0.0f64; 3 * draft * per_o];
            let mut st_ref = vec![vec![]; 3 * draft];
            for i in 0..3 {
                let par = &parents[i * draft..(i + 1) * draft];
                for t in 0..draft {
                    let p: Vec<usize> = path(par, t).iter().map(|&x| i * draft + x).collect();
                    let r = drafts.gather(&p).oracle(&b.params, &[0, p.len()], Some(&s0[i * per_s..(i + 1) * per_s]));
                    let last = (p.len() - 1) * per_o;
                    o_ref[(i * draft + t) * per_o..(i * draft + t + 1) * per_o].copy_from_slice(&r.o[last..last + per_o]);
                    st_ref[i * draft + t] = r.final_state;
                }
            }
            let tol = ctx.tol(dt, sd, 64);
            ctx.ratio(&format!("{name}: verify outputs vs decoding each path"), &o, &o_ref, tol);
            for a in 0..draft {
                let acc: Vec<usize> = (0..3).map(|i| (a + i) % draft).collect();
                let snaps = if a == 0 { vec![Some(snap), None, None] } else { vec![] };
                let cb = CommitBatch::new(&b.pool, &slots, &acc.iter().map(|&a| Some(a)).collect::<Vec<_>>(), &snaps)?;
                b.commit(&cb)?;
                for i in 0..3 {
                    ctx.ratio(
                        &format!("{name}: request {i} commit of step {} vs decoding its path", acc[i]),
                        &b.state(slots[i])?,
                        &st_ref[i * draft + acc[i]],
                        tol,
                    );
                }
                if a == 0 {
                    ctx.exact(&format!("{name}: commit snapshot == committed state"), b.state(snap)? == b.state(slots[0])?, String::new());
                }
                // Restoring the main state makes the verify stale: verify again
                // (same inputs, same scratch) before committing the next step.
                for (s, st) in slots.iter().zip(&saved) {
                    b.pool.import(*s, st)?;
                }
                b.run(Batch::Verify(&vb), &drafts)?;
            }
            // A commit that skips request 1 (nothing accepted) leaves its slot's
            // bytes as they are and its verify current: a later commit of it
            // still equals decoding its path.
            let last = draft - 1;
            b.commit(&CommitBatch::new(&b.pool, &slots, &[Some(0), None, Some(last)], &[])?)?;
            ctx.exact(
                &format!("{name}: commit skipping request 1 leaves its slot untouched"),
                b.pool.export(slots[1])? == saved[1],
                String::new(),
            );
            for (i, t) in [(0, 0), (2, last)] {
                ctx.ratio(&format!("{name}: request {i} committed beside a skipped one"), &b.state(slots[i])?, &st_ref[i * draft + t], tol);
            }
            b.commit(&CommitBatch::new(&b.pool, &slots, &[None, Some(2), None], &[])?)?;
            ctx.ratio(&format!("{name}: request 1 committed after being skipped"), &b.state(slots[1])?, &st_ref[draft + 2], tol);
        }
    }
    Ok(())
}

/// Commit without a current verify is [`Error::NoCurrentVerify`] and changes
/// nothing: before any verify, after a decode made the verify stale, and a
/// second commit of one verify.
fn stale_verify<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D, mode: SpecMode) -> Result<()> {
    let (draft, shape) = (3usize, sh(1, 2, 16, 16, false));
    let name = format!("{} stale verify ({mode} mode)", shape.name());
    if !ctx.opts.wants(&name) {
        return Ok(());
    }
    let d = make();
    let dims = shape.dims()?;
    let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
    let seed = ctx.seed(&[mode as u64, 31]);
    let mut b = Bench::speculative(&d, dims, 2, sd, draft, mode, dt)?;
    let slots = b.pool.alloc(1)?;
    b.randomize(&slots, seed)?;
    let drafts = DeltaInputs::random(&dims, draft, dt, seed ^ 3);
    let vb = VerifyBatch::chain(&b.pool, &slots)?;
    let cb = CommitBatch::new(&b.pool, &slots, &[Some(draft - 1)], &[])?;
    let refused = |ctx: &mut Ctx<'_>, b: &mut Bench<'_, D>, when: &str| -> Result<()> {
        let before = b.pool.digest()?;
        let r = b.commit(&cb);
        let ok = matches!(r, Err(Error::NoCurrentVerify { .. })) && b.pool.digest()? == before;
        ctx.exact(&format!("{name}: commit {when} is NoCurrentVerify and changes nothing"), ok, format!("{r:?}"));
        Ok(())
    };
    refused(ctx, &mut b, "before any verify")?;
    b.run(Batch::Verify(&vb), &drafts)?;
    b.run(Batch::Decode(&DecodeBatch::new(&b.pool, &slots)?), &DeltaInputs::random(&dims, 1, dt, seed ^ 5))?;
    refused(ctx, &mut b, "after a decode of the slot")?;
    b.run(Batch::Verify(&vb), &drafts)?;
    b.commit(&cb)?;
    refused(ctx, &mut b, "a second time after one verify")?;
    Ok(())
}

/// Replay against scratch on the same states and drafts: verify outputs and
/// committed states bitwise equal, and the replay commit bitwise equal to
/// decoding the accepted path's tokens one by one.
fn replay_bitwise<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let draft = 4usize;
    let state_dtypes = make().capabilities().state_dtypes.clone();
    let shapes = [sh(1, 2, 32, 16, false), sh(2, 4, 16, 48, true)];
    let cases = shapes.iter().enumerate().flat_map(|(si, s)| TREES.iter().enumerate().map(move |(ti, t)| (si, s, ti, t)));
    for ((si, shape, ti, (kind, parents)), &sd) in cases.flat_map(|c| state_dtypes.iter().map(move |sd| (c, sd))) {
        {
            let name = format!("{} D={draft} {kind} {sd} state replay vs scratch", shape.name());
            if !ctx.opts.wants(&name) {
                continue;
            }
            let d = make();
            let dims = shape.dims()?;
            let dt = Bench::default_dtype(&d);
            let seed = ctx.seed(&[si as u64, ti as u64, 77]);
            let mut scratch = Bench::speculative(&d, dims, 6, sd, draft, SpecMode::Scratch, dt)?;
            let mut replay = Bench::speculative(&d, dims, 6, sd, draft, SpecMode::Replay, dt)?;
            let slots = scratch.pool.alloc(3)?;
            let (rslots, copies) = (replay.pool.alloc(3)?, replay.pool.alloc(3)?);
            scratch.randomize(&slots, seed)?;
            for (i, &s) in slots.iter().enumerate() {
                let st = scratch.pool.export(s)?;
                replay.pool.import(rslots[i], &st)?;
                replay.pool.import(copies[i], &st)?;
            }
            let drafts = DeltaInputs::random(&dims, 3 * draft, dt, seed ^ 13);
            let o_s = scratch.run(Batch::Verify(&VerifyBatch::tree(&scratch.pool, &slots, parents.as_slice())?), &drafts)?;
            let o_r = replay.run(Batch::Verify(&VerifyBatch::tree(&replay.pool, &rslots, parents.as_slice())?), &drafts)?;
            ctx.bits(&format!("{name}: verify outputs"), &o_r, &o_s);
            let acc: Vec<Option<usize>> = (0..3).map(|i| Some((seed as usize + i) % draft)).collect();
            scratch.commit(&CommitBatch::new(&scratch.pool, &slots, &acc, &[])?)?;
            replay.commit(&CommitBatch::new(&replay.pool, &rslots, &acc, &[])?)?;
            ctx.bits(&format!("{name}: committed states (accepted {acc:?})"), &replay.states(&rslots)?, &scratch.states(&slots)?);
            for i in 0..3 {
                let dec = DecodeBatch::new(&replay.pool, &copies[i..i + 1])?;
                for x in path(&parents[i * draft..(i + 1) * draft], acc[i].expect("every request accepts a step")) {
                    replay.run(Batch::Decode(&dec), &drafts.gather(&[i * draft + x]))?;
                }
            }
            ctx.bits(&format!("{name}: replay commit == decoding the accepted tokens"), &replay.states(&rslots)?, &replay.states(&copies)?);
        }
    }
    Ok(())
}
