//! DESIGN §5.7: every input, state and conv-state dtype the backend claims,
//! at its tolerance.

use super::{init_states, sh, Ctx};
use crate::gen::{cu_from_lens, DeltaInputs, LayerInputs, LayerParams};
use crate::harness::{Batch, Bench};
use deltanet_core::{CommitBatch, DType, DecodeBatch, ExtendBatch, KernelDispatcher, MambaStatePool, Result, VerifyBatch};

pub(crate) fn dtypes<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let caps = d.capabilities().clone();
    let shape = sh(1, 2, 32, 48, false);
    let dims = shape.dims()?;
    for &dt in &caps.input_dtypes {
        for &sd in &caps.state_dtypes {
            let name = format!("{} inputs {dt} state {sd}", shape.name());
            if !ctx.opts.wants(&name) {
                continue;
            }
            let seed = ctx.seed(&[dt as u64, sd as u64]);
            let mut b = Bench::new(&d, dims, 2, sd, None, dt)?;
            let slots = b.pool.alloc(2)?;
            b.randomize(&slots, seed)?;
            let before = b.states(&slots)?;
            let lens = [65usize, 7];
            let cu = cu_from_lens(&lens);
            let inp = DeltaInputs::random(&dims, cu[2] + 4, dt, seed ^ 19);
            let init = [true, false];
            let o = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu, &slots, &init)?), &inp.slice(0..cu[2]))?;
            let dec = DecodeBatch::new(&b.pool, &slots)?;
            let d1 = b.run(Batch::Decode(&dec), &inp.slice(cu[2]..cu[2] + 2))?;
            let d2 = b.run(Batch::Decode(&dec), &inp.slice(cu[2] + 2..cu[2] + 4))?;
            // reference over each sequence's whole stream
            let idx: Vec<usize> = (cu[0]..cu[1]).chain([cu[2], cu[2] + 2]).chain(cu[1]..cu[2]).chain([cu[2] + 1, cu[2] + 3]).collect();
            let cu2 = [0, lens[0] + 2, lens[0] + lens[1] + 4];
            let r = inp.gather(&idx).oracle(&b.params, &cu2, Some(&init_states(dims.state_elems(), &before, &init)));
            let per = dims.num_v_heads * dims.head_v_dim;
            let mut got = o[..cu[1] * per].to_vec();
            got.extend(&d1[..per]);
            got.extend(&d2[..per]);
            got.extend(&o[cu[1] * per..]);
            got.extend(&d1[per..]);
            got.extend(&d2[per..]);
            // outputs are stored in the input dtype, so they carry its rounding; the
            // oracle ran on the same rounded inputs, so an f32 state owes f32 accuracy
            ctx.ratio(&format!("{name}: outputs (extend + 2 decodes)"), &got, &r.o, ctx.tol(dt, sd, 70));
            ctx.ratio(&format!("{name}: final states"), &b.states(&slots)?, &r.final_state, ctx.tol(DType::F32, sd, 70));
        }
    }
    conv_dtypes(ctx, &d)
}

/// Each claimed conv-state dtype through the layer forward: extend (from a
/// random conv state), decode, verify + commit, against the oracle fed the
/// conv state as the pool holds it.
fn conv_dtypes<D: KernelDispatcher>(ctx: &mut Ctx<'_>, d: &D) -> Result<()> {
    let caps = d.capabilities().clone();
    let shape = sh(1, 2, 16, 32, false);
    let dims = shape.dims()?;
    let (dt, sd) = (Bench::default_dtype(d), Bench::default_state_dtype(d));
    for &cd in &caps.conv_dtypes {
        let name = format!("{} conv state {cd} (layer forward)", shape.name());
        if !ctx.opts.wants(&name) {
            continue;
        }
        let seed = ctx.seed(&[0xc0, cd as u64]);
        let w = LayerParams::random(&dims, seed ^ 1);
        let mut b = Bench::with_conv(d, dims, 2, sd, cd, Some(2), dt)?;
        let slots = b.pool.alloc(2)?;
        b.randomize(&slots, seed)?;
        let (per_s, per_c, per_o) = (dims.state_elems(), dims.conv_elems(), dims.num_v_heads * dims.head_v_dim);
        let st0 = b.states(&slots)?;
        let cv0 = b.convs(&slots)?;
        let lens = [40usize, 3];
        let streams: Vec<LayerInputs> = (0..2).map(|s| LayerInputs::random(&dims, lens[s] + 3, dt, seed ^ (7 + s as u64))).collect();
        let pack = |r: [std::ops::Range<usize>; 2]| {
            let (a, c) = (streams[0].slice(r[0].clone()), streams[1].slice(r[1].clone()));
            let mut all = a.clone();
            all.tokens += c.tokens;
            all.mixed_qkv.extend(&c.mixed_qkv);
            all.a.extend(&c.a);
            all.b.extend(&c.b);
            all
        };
        let o1 =
            b.layer(Batch::Extend(&ExtendBatch::new(&b.pool, &cu_from_lens(&lens), &slots, &[true, true])?), &w, &pack([0..40, 0..3]))?;
        let o2 = b.layer(Batch::Decode(&DecodeBatch::new(&b.pool, &slots)?), &w, &pack([40..41, 3..4]))?;
        let o3 = b.layer(Batch::Verify(&VerifyBatch::chain(&b.pool, &slots)?), &w, &pack([41..43, 4..6]))?;
        b.commit(&CommitBatch::new(&b.pool, &slots, &[Some(1), Some(0)], &[])?)?;
        let params = b.params;
        let oracle = |s: usize, n: usize| {
            let idx: Vec<usize> = (0..n).collect();
            streams[s].gather(&idx).oracle(&w, &params, &[0, n], &cv0[s * per_c..(s + 1) * per_c], &st0[s * per_s..(s + 1) * per_s])
        };
        let (r0, r1) = (oracle(0, 43), oracle(1, 5));
        let mut got = o1[..40 * per_o].to_vec();
        got.extend(&o2[..per_o]);
        got.extend(&o3[..2 * per_o]);
        got.extend(&o1[40 * per_o..]);
        got.extend(&o2[per_o..]);
        got.extend(&o3[2 * per_o..3 * per_o]);
        let mut want = r0.o.clone();
        want.extend(&r1.o);
        let tol = if cd == DType::F32 { ctx.tol(dt, sd, 43) } else { ctx.tol(cd, sd, 43) };
        ctx.ratio(&format!("{name}: outputs"), &got, &want, tol);
        let mut cw = r0.conv_state.clone();
        cw.extend(&r1.conv_state);
        ctx.ratio(&format!("{name}: committed conv states"), &b.convs(&slots)?, &cw, tol);
        let mut sw = r0.state.clone();
        sw.extend(&r1.state);
        ctx.ratio(&format!("{name}: committed states"), &b.states(&slots)?, &sw, tol);
    }
    Ok(())
}
