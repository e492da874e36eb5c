//! DESIGN §5.5: a sequence's results do not depend on the rest of its batch,
//! and two runs give the same bits.

use super::{concat, sh, Ctx};
use crate::gen::{cu_from_lens, DeltaInputs};
use crate::harness::{Batch, Bench};
use deltanet_core::{CommitBatch, DecodeBatch, ExtendBatch, KernelDispatcher, MambaStatePool, ModelDims, Result, VerifyBatch};

/// Runs X (len 100, with initial state) through extend, 2 decodes and a verify,
/// inside a batch laid out as `layout` ('X' = the target, digits = other
/// sequences' lengths / 10 + 1). Returns X's outputs and final states.
fn run_in_batch<D: KernelDispatcher>(d: &D, dims: ModelDims, layout: &[usize], x_pos: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
    let (dt, sd) = (Bench::default_dtype(d), Bench::default_state_dtype(d));
    let n = layout.len();
    let draft = 3;
    let mut b = Bench::new(d, dims, n + 2, sd, Some(draft), dt)?;
    // occupy some slots first so X does not always land in the same slot index
    let pad = b.pool.alloc(x_pos % 2 + 1)?;
    let slots = b.pool.alloc(n)?;
    b.pool.free(&pad)?;
    for (j, &s) in slots.iter().enumerate() {
        let sseed = if j == x_pos { seed } else { seed ^ ((j as u64 + 1) * 0x1234_5678) };
        b.randomize(&[s], sseed)?;
    }
    let cu = cu_from_lens(layout);
    // X's tokens come from its own stream; others from theirs
    let stream = |j: usize, len: usize, salt: u64| {
        let s = if j == x_pos { seed ^ salt } else { seed ^ salt ^ ((j as u64 + 7) * 0x9999) };
        DeltaInputs::random(&dims, len, dt, s)
    };
    let parts: Vec<DeltaInputs> = layout.iter().enumerate().map(|(j, &l)| stream(j, l, 1)).collect();
    let all = concat(&parts);
    let init = vec![true; n];
    let o = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu, &slots, &init)?), &all)?;
    let per = dims.num_v_heads * dims.head_v_dim;
    let mut out = vec![o[cu[x_pos] * per..cu[x_pos + 1] * per].to_vec(), b.state(slots[x_pos])?];
    let dec = DecodeBatch::new(&b.pool, &slots)?;
    for step in 0..2u64 {
        let parts: Vec<DeltaInputs> = (0..n).map(|j| stream(j, 1, 100 + step)).collect();
        let o = b.run(Batch::Decode(&dec), &concat(&parts))?;
        out.push(o[x_pos * per..(x_pos + 1) * per].to_vec());
    }
    out.push(b.state(slots[x_pos])?);
    let vb = VerifyBatch::chain(&b.pool, &slots)?;
    let parts: Vec<DeltaInputs> = (0..n).map(|j| stream(j, draft, 200)).collect();
    let o = b.run(Batch::Verify(&vb), &concat(&parts))?;
    out.push(o[x_pos * draft * per..(x_pos + 1) * draft * per].to_vec());
    let cb = CommitBatch::new(&b.pool, &slots, &vec![Some(1); n], &[])?;
    b.commit(&cb)?;
    out.push(b.state(slots[x_pos])?);
    Ok(out)
}

const STAGES: [&str; 7] =
    ["extend outputs", "extend state", "decode 1 output", "decode 2 output", "decode state", "verify outputs", "commit state"];

pub(crate) fn batch_invariance<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    for (si, shape) in [sh(2, 4, 32, 16, false), sh(1, 2, 64, 48, true)].iter().enumerate() {
        let name = shape.name();
        if !ctx.opts.wants(&name) {
            continue;
        }
        let d = make();
        let dims = shape.dims()?;
        if ctx.outside_limits(d.capabilities(), &name, &dims) {
            continue;
        }
        let seed = ctx.seed(&[si as u64]);
        let alone = run_in_batch(&d, dims, &[100], 0, seed)?;
        for (layout, pos) in [(vec![37, 100, 64], 1usize), (vec![1, 130, 65, 100], 3), (vec![100, 3], 0)].iter() {
            let other = run_in_batch(&d, dims, layout, *pos, seed)?;
            for (k, stage) in STAGES.iter().enumerate() {
                ctx.bits(&format!("{name}: X in batch {layout:?} at {pos} vs alone: {stage}"), &other[k], &alone[k]);
            }
        }
    }
    Ok(())
}

pub(crate) fn determinism<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let shape = sh(2, 4, 48, 32, false);
    let name = shape.name();
    if !ctx.opts.wants(&name) {
        return Ok(());
    }
    let dims = shape.dims()?;
    let seed = ctx.seed(&[]);
    let layout = [130usize, 1, 64, 65];
    let first = run_in_batch(&make(), dims, &layout, 2, seed)?;
    for run in 1..3 {
        let again = run_in_batch(&make(), dims, &layout, 2, seed)?;
        for (k, stage) in STAGES.iter().enumerate() {
            ctx.bits(&format!("{name} batch {layout:?}: run {run} vs run 0: {stage}"), &again[k], &first[k]);
        }
    }
    Ok(())
}
