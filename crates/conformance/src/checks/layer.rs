//! The layer forward (conv + gate + delta rule) against the oracle: extend,
//! chunked extend, snapshots, decode, verify + commit with conv windows.

use super::{init_states, path, sh, Ctx};
use crate::gen::{cu_from_lens, LayerInputs, LayerParams};
use crate::harness::{Batch, Bench};
use deltanet_core::{CommitBatch, DecodeBatch, ExtendBatch, HostState, KernelDispatcher, MambaStatePool, Result, Snapshot, VerifyBatch};

pub(crate) fn layer_forward<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let draft = 3usize;
    let modes = make().capabilities().spec_modes.clone();
    let cases = [sh(1, 2, 16, 32, false), sh(2, 4, 32, 16, true)]
        .into_iter()
        .enumerate()
        .flat_map(|(si, s)| modes.iter().map(move |&m| (si, s, m)));
    for (si, shape, mode) in cases {
        let name = format!("{} layer forward ({mode} mode)", shape.name());
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
        let w = LayerParams::random(&dims, seed ^ 41);
        let lens = [70usize, 3, 64];
        let first = [33usize, 2, 40];
        let init = [true, false, true];
        let ndec = 2;
        let n = 3;
        // one stream of tokens per sequence: extend tokens, decode tokens, drafts
        let streams: Vec<LayerInputs> =
            (0..n).map(|s| LayerInputs::random(&dims, lens[s] + ndec + draft, dt, seed ^ (43 + s as u64))).collect();
        let mut b = Bench::speculative(&d, dims, n + 1, sd, draft, mode, dt)?;
        let slots = b.pool.alloc(n)?;
        let snap = b.pool.alloc(1)?[0];
        b.randomize(&slots, seed)?;
        b.randomize(&[snap], seed ^ 47)?;
        let (per_s, per_c, per_o) = (dims.state_elems(), dims.conv_elems(), dims.num_v_heads * dims.head_v_dim);
        let st0 = init_states(per_s, &b.states(&slots)?, &init);
        let cv0 = init_states(per_c, &b.convs(&slots)?, &init);
        let params = b.params;
        let oracle = |s: usize, idx: &[usize]| {
            streams[s].gather(idx).oracle(&w, &params, &[0, idx.len()], &cv0[s * per_c..(s + 1) * per_c], &st0[s * per_s..(s + 1) * per_s])
        };
        let tol = ctx.tol(dt, sd, 70);
        let pack = |ranges: &[std::ops::Range<usize>]| {
            let parts: Vec<LayerInputs> = ranges.iter().enumerate().map(|(s, r)| streams[s].slice(r.clone())).collect();
            let mut all = parts[0].clone();
            for p in &parts[1..] {
                all.tokens += p.tokens;
                all.mixed_qkv.extend(&p.mixed_qkv);
                all.a.extend(&p.a);
                all.b.extend(&p.b);
            }
            all
        };
        // chunk 1, chunk 2 (with a snapshot of sequence 0 ten tokens in)
        let r1: Vec<_> = (0..n).map(|s| 0..first[s]).collect();
        let o1 = b.layer(Batch::Extend(&ExtendBatch::new(&b.pool, &cu_from_lens(&first), &slots, &init)?), &w, &pack(&r1))?;
        let second: Vec<usize> = (0..n).map(|s| lens[s] - first[s]).collect();
        let r2: Vec<_> = (0..n).map(|s| first[s]..lens[s]).collect();
        let eb2 = ExtendBatch::new(&b.pool, &cu_from_lens(&second), &slots, &[true; 3])?
            .with_snapshots(&b.pool, &[Snapshot { seq: 0, position: 10, slot: snap }])?;
        let o2 = b.layer(Batch::Extend(&eb2), &w, &pack(&r2))?;
        // compare per sequence
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let (mut off1, mut off2) = (0, 0);
        for s in 0..n {
            got.extend(&o1[off1 * per_o..(off1 + first[s]) * per_o]);
            got.extend(&o2[off2 * per_o..(off2 + second[s]) * per_o]);
            off1 += first[s];
            off2 += second[s];
            want.extend(oracle(s, &(0..lens[s]).collect::<Vec<_>>()).o);
        }
        ctx.ratio(&format!("{name}: chunked extend outputs (conv + gate + delta)"), &got, &want, tol);
        let full: Vec<_> = (0..n).map(|s| oracle(s, &(0..lens[s]).collect::<Vec<_>>())).collect();
        let st_want: Vec<f64> = full.iter().flat_map(|r| r.state.iter().copied()).collect();
        let cv_want: Vec<f64> = full.iter().flat_map(|r| r.conv_state.iter().copied()).collect();
        ctx.ratio(&format!("{name}: states after extend"), &b.states(&slots)?, &st_want, tol);
        ctx.ratio(&format!("{name}: conv states after extend"), &b.convs(&slots)?, &cv_want, tol);
        let sr = oracle(0, &(0..first[0] + 10).collect::<Vec<_>>());
        ctx.ratio(&format!("{name}: snapshot state (seq 0 at {})", first[0] + 10), &b.state(snap)?, &sr.state, tol);
        ctx.ratio(&format!("{name}: snapshot conv state"), &b.conv(snap)?, &sr.conv_state, tol);
        // decode
        let dec = DecodeBatch::new(&b.pool, &slots)?;
        for t in 0..ndec {
            let r: Vec<_> = (0..n).map(|s| lens[s] + t..lens[s] + t + 1).collect();
            let o = b.layer(Batch::Decode(&dec), &w, &pack(&r))?;
            let want: Vec<f64> = (0..n)
                .flat_map(|s| {
                    let rr = oracle(s, &(0..lens[s] + t + 1).collect::<Vec<_>>());
                    rr.o[(lens[s] + t) * per_o..].to_vec()
                })
                .collect();
            ctx.ratio(&format!("{name}: decode step {t} outputs"), &o, &want, tol);
        }
        let pre: Vec<usize> = (0..n).map(|s| lens[s] + ndec).collect();
        let full: Vec<_> = (0..n).map(|s| oracle(s, &(0..pre[s]).collect::<Vec<_>>())).collect();
        let st_want: Vec<f64> = full.iter().flat_map(|r| r.state.iter().copied()).collect();
        let cv_want: Vec<f64> = full.iter().flat_map(|r| r.conv_state.iter().copied()).collect();
        ctx.ratio(&format!("{name}: states after decode"), &b.states(&slots)?, &st_want, tol);
        ctx.ratio(&format!("{name}: conv states after decode"), &b.convs(&slots)?, &cv_want, tol);
        // verify (chain, chain, tree) and commit of every step
        let parents: Vec<i64> = vec![-1, 0, 1, -1, 0, 1, -1, -1, 0];
        let saved: Vec<HostState> = slots.iter().map(|&s| b.pool.export(s)).collect::<Result<_>>()?;
        let vb = VerifyBatch::tree(&b.pool, &slots, &parents)?;
        let r: Vec<_> = (0..n).map(|s| pre[s]..pre[s] + draft).collect();
        let o = b.layer(Batch::Verify(&vb), &w, &pack(&r))?;
        let after: Vec<HostState> = slots.iter().map(|&s| b.pool.export(s)).collect::<Result<_>>()?;
        ctx.exact(&format!("{name}: verify leaves main conv and recurrent state untouched"), after == saved, String::new());
        let mut want = Vec::new();
        let mut refs = Vec::new();
        for s in 0..n {
            for t in 0..draft {
                let mut idx: Vec<usize> = (0..pre[s]).collect();
                idx.extend(path(&parents[s * draft..(s + 1) * draft], t).iter().map(|&x| pre[s] + x));
                let rr = oracle(s, &idx);
                want.extend(&rr.o[(idx.len() - 1) * per_o..]);
                refs.push(rr);
            }
        }
        ctx.ratio(&format!("{name}: verify outputs (chains and a tree)"), &o, &want, tol);
        for a in 0..draft {
            let acc: Vec<usize> = (0..n).map(|s| (a + s) % draft).collect();
            b.commit(&CommitBatch::new(&b.pool, &slots, &acc.iter().map(|&a| Some(a)).collect::<Vec<_>>(), &[])?)?;
            for s in 0..n {
                let rr = &refs[s * draft + acc[s]];
                ctx.ratio(&format!("{name}: seq {s} commit of step {}: state", acc[s]), &b.state(slots[s])?, &rr.state, tol);
                ctx.ratio(&format!("{name}: seq {s} commit of step {}: conv window", acc[s]), &b.conv(slots[s])?, &rr.conv_state, tol);
            }
            // Restoring the main state makes the verify stale: verify again.
            for (sl, st) in slots.iter().zip(&saved) {
                b.pool.import(*sl, st)?;
            }
            b.layer(Batch::Verify(&vb), &w, &pack(&r))?;
        }
    }
    Ok(())
}
