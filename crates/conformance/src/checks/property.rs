//! One caller-chosen case, for property tests that draw random batches
//! ([`check_batch`](crate::check_batch)).

use super::{init_states, path, Ctx};
use crate::gen::{cu_from_lens, DeltaInputs};
use crate::harness::{Batch, Bench};
use deltanet_core::{CommitBatch, ExtendBatch, KernelDispatcher, MambaStatePool, ModelDims, Result, VerifyBatch};

/// One extend of sequences of `lens` (with `init` flags) vs the oracle, then
/// a verify of `parents.len() / lens.len()` drafts per sequence (a tree) and
/// the commit of `accepted`, vs decoding the accepted path.
pub(crate) fn one_case<D: KernelDispatcher>(
    ctx: &mut Ctx<'_>,
    d: &D,
    dims: ModelDims,
    lens: &[usize],
    init: &[bool],
    parents: &[i64],
    accepted: &[usize],
) -> Result<()> {
    let n = lens.len();
    let draft = parents.len() / n;
    let (dt, sd) = (Bench::default_dtype(d), Bench::default_state_dtype(d));
    let seed = ctx.seed(&[lens.len() as u64, lens.iter().sum::<usize>() as u64]);
    let mut b = Bench::new(d, dims, n, sd, (draft > 0).then_some(draft), dt)?;
    let slots = b.pool.alloc(n)?;
    b.randomize(&slots, seed)?;
    let before = b.states(&slots)?;
    let cu = cu_from_lens(lens);
    let inp = DeltaInputs::random(&dims, cu[n], dt, seed ^ 1);
    let o = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu, &slots, init)?), &inp)?;
    let per = dims.state_elems();
    let r = inp.oracle(&b.params, &cu, Some(&init_states(per, &before, init)));
    let tol = ctx.tol(dt, sd, *lens.iter().max().unwrap_or(&0));
    let name = format!("lens {lens:?} init {init:?}");
    ctx.ratio(&format!("{name}: extend outputs"), &o, &r.o, tol);
    let s0 = b.states(&slots)?;
    ctx.ratio(&format!("{name}: extend states"), &s0, &r.final_state, tol);
    if draft == 0 {
        return Ok(());
    }
    let drafts = DeltaInputs::random(&dims, n * draft, dt, seed ^ 2);
    b.run(Batch::Verify(&VerifyBatch::tree(&b.pool, &slots, parents)?), &drafts)?;
    b.commit(&CommitBatch::new(&b.pool, &slots, &accepted.iter().map(|&a| Some(a)).collect::<Vec<_>>(), &[])?)?;
    for i in 0..n {
        let p: Vec<usize> = path(&parents[i * draft..(i + 1) * draft], accepted[i]).iter().map(|&x| i * draft + x).collect();
        let rr = drafts.gather(&p).oracle(&b.params, &[0, p.len()], Some(&s0[i * per..(i + 1) * per]));
        ctx.ratio(
            &format!("{name}: request {i} tree {:?} commit of {}", &parents[i * draft..(i + 1) * draft], accepted[i]),
            &b.state(slots[i])?,
            &rr.final_state,
            tol,
        );
    }
    Ok(())
}
