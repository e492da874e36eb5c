//! DESIGN §5.4: verify of D drafts (chains and trees) leaves the main state
//! untouched, the commit of every accepted step equals decoding it, and a
//! commit that skips a request leaves it (and its verify) as it was.

use super::{path, sh, Ctx};
use crate::gen::{cu_from_lens, DeltaInputs};
use crate::harness::{Batch, Bench};
use deltanet_core::{CommitBatch, ExtendBatch, HostState, KernelDispatcher, MambaStatePool, Result, VerifyBatch};

pub(crate) fn verify_commit<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let draft = 4usize;
    let trees: [(&str, Vec<i64>); 2] =
        [("chains", vec![-1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2]), ("trees", vec![-1, 0, 1, 2, -1, 0, 0, 1, -1, -1, 1, 2])];
    for (si, shape) in [sh(1, 2, 32, 16, false), sh(2, 2, 16, 48, true), sh(1, 4, 64, 32, false)].iter().enumerate() {
        for (ti, (kind, parents)) in trees.iter().enumerate() {
            let name = format!("{} D={draft} {kind}", shape.name());
            if !ctx.opts.wants(&name) {
                continue;
            }
            let d = make();
            let dims = shape.dims()?;
            if d.capabilities().max_draft_tokens.is_some_and(|m| m < draft) {
                ctx.exact(&format!("{name}: skipped (backend allows fewer draft tokens)"), true, String::new());
                continue;
            }
            let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
            let seed = ctx.seed(&[si as u64, ti as u64]);
            let mut b = Bench::new(&d, dims, 4, sd, Some(draft), dt)?;
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
