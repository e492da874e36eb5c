//! DESIGN §5.6: export from the backend's pool, import into the other layout
//! and back, exactly; the same inputs through two dispatchers agree.

use super::{concat, init_states, sh, Ctx};
use crate::gen::{cu_from_lens, to_f64, DeltaInputs};
use crate::harness::{Batch, Bench};
use deltanet_core::{
    tolerance, Capabilities, DType, DecodeBatch, ExtendBatch, HostMemory, HostState, KMajor, KernelDispatcher, LayoutKind, MambaStatePool,
    Result, StateLayout, StatePool, VMajor,
};

/// Imports `st` into a host-reference pool of layout `L`, exports it back.
fn through_host<L: StateLayout>(st: &HostState) -> Result<HostState> {
    let cfg = deltanet_core::PoolConfig::new(st.layers, 1, st.dims).with_state_dtype(st.state_dtype).with_conv_dtype(st.conv_dtype);
    let mut caps = Capabilities::host_reference(L::KIND);
    caps.state_dtypes = vec![st.state_dtype];
    caps.conv_dtypes = vec![st.conv_dtype];
    let mut p: StatePool<HostMemory, L> = StatePool::new(HostMemory, cfg, &caps)?;
    let s = p.alloc(1)?[0];
    p.import(s, st)?;
    p.export(s)
}

pub(crate) fn layout_round_trip<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let dt = Bench::default_dtype(&d);
    let other = match D::Layout::KIND {
        LayoutKind::KMajor => LayoutKind::VMajor,
        LayoutKind::VMajor => LayoutKind::KMajor,
    };
    for (si, shape) in [sh(1, 2, 16, 48, false), sh(2, 4, 32, 16, false), sh(1, 1, 64, 64, false)].iter().enumerate() {
        for &sd in &d.capabilities().state_dtypes.clone() {
            let name = format!("{} state {sd} {} -> {} -> {}", shape.name(), D::Layout::KIND.name(), other.name(), D::Layout::KIND.name());
            if !ctx.opts.wants(&name) {
                continue;
            }
            let dims = shape.dims()?;
            let seed = ctx.seed(&[si as u64, sd as u64]);
            let mut b = Bench::new(&d, dims, 3, sd, None, dt)?;
            let slots = b.pool.alloc(3)?;
            b.randomize(&slots[..1], seed)?;
            // a kernel-made state
            let inp = DeltaInputs::random(&dims, 70, dt, seed ^ 13);
            b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &[0, 70], &slots[..1], &[true])?), &inp)?;
            let exported = b.pool.export(slots[0])?;
            let via = match other {
                LayoutKind::KMajor => through_host::<KMajor>(&exported)?,
                LayoutKind::VMajor => through_host::<VMajor>(&exported)?,
            };
            ctx.exact(&format!("{name}: through the other layout, exact"), via == exported, String::new());
            b.pool.import(slots[1], &via)?;
            ctx.exact(&format!("{name}: imported back, exact"), b.pool.export(slots[1])? == exported, String::new());
            // the imported copy is where the kernel reads: continuing from either gives the same bits
            b.pool.copy(slots[0], slots[2])?;
            let more = DeltaInputs::random(&dims, 65, dt, seed ^ 17);
            let two = [slots[1], slots[2]];
            let both = concat(&[more.clone(), more.clone()]);
            let o = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &[0, 65, 130], &two, &[true, true])?), &both)?;
            let half = o.len() / 2;
            ctx.bits(&format!("{name}: continuing from the migrated state, outputs"), &o[..half], &o[half..]);
            ctx.bits(&format!("{name}: continuing from the migrated state, states"), &b.state(two[0])?, &b.state(two[1])?);
        }
    }
    Ok(())
}

/// Same inputs through `a` and `b`: canonical states and outputs agree.
pub(crate) fn cross<A: KernelDispatcher, B: KernelDispatcher>(ctx: &mut Ctx<'_>, a: &A, b: &B) -> Result<()> {
    // dtypes both claim, f32 first
    let common = |x: &[DType], y: &[DType]| [DType::F32, DType::BF16, DType::F16].into_iter().find(|t| x.contains(t) && y.contains(t));
    let (ca, cb) = (a.capabilities(), b.capabilities());
    let (Some(dt), Some(sd)) = (common(&ca.input_dtypes, &cb.input_dtypes), common(&ca.state_dtypes, &cb.state_dtypes)) else {
        ctx.fail("cross", format!("{} and {} share no input or state dtype", ca.backend, cb.backend));
        return Ok(());
    };
    for (si, shape) in [sh(2, 4, 32, 48, false), sh(1, 2, 16, 16, true), sh(1, 1, 128, 64, false)].iter().enumerate() {
        let name = format!("{} {} vs {}", shape.name(), a.capabilities().backend, b.capabilities().backend);
        if !ctx.opts.wants(&name) {
            continue;
        }
        let dims = shape.dims()?;
        let seed = ctx.seed(&[0xc0ffee, si as u64]);
        let lens = [65usize, 130, 1];
        let cu = cu_from_lens(&lens);
        let inp = DeltaInputs::random(&dims, cu[3], dt, seed ^ 1);
        let dec = DeltaInputs::random(&dims, 3, dt, seed ^ 2);
        let init = [true, false, true];
        let mut ba = Bench::new(a, dims, 3, sd, None, dt)?;
        let mut bb = Bench::new(b, dims, 3, sd, None, dt)?;
        let sa = ba.pool.alloc(3)?;
        let sb = bb.pool.alloc(3)?;
        ba.randomize(&sa, seed)?;
        bb.randomize(&sb, seed)?;
        let before = ba.states(&sa)?;
        let oa = ba.run(Batch::Extend(&ExtendBatch::new(&ba.pool, &cu, &sa, &init)?), &inp)?;
        let ob = bb.run(Batch::Extend(&ExtendBatch::new(&bb.pool, &cu, &sb, &init)?), &inp)?;
        let da = ba.run(Batch::Decode(&DecodeBatch::new(&ba.pool, &sa)?), &dec)?;
        let db = bb.run(Batch::Decode(&DecodeBatch::new(&bb.pool, &sb)?), &dec)?;
        let (sta, stb) = (ba.states(&sa)?, bb.states(&sb)?);
        let tol = ctx.tol(dt, sd, 130);
        ctx.ratio(&format!("{name}: extend outputs"), &oa, &to_f64(&ob), tolerance::CROSS_FACTOR * tol);
        ctx.ratio(&format!("{name}: decode outputs"), &da, &to_f64(&db), tolerance::CROSS_FACTOR * tol);
        ctx.ratio(&format!("{name}: canonical states"), &sta, &to_f64(&stb), tolerance::CROSS_FACTOR * tol);
        // and both against the oracle
        let mut idx: Vec<usize> = Vec::new();
        let mut cu2 = vec![0];
        for s in 0..3 {
            idx.extend(cu[s]..cu[s + 1]);
            idx.push(cu[3] + s);
            cu2.push(idx.len());
        }
        let all = concat(&[inp.clone(), dec.clone()]).gather(&idx);
        let r = all.oracle(&ba.params, &cu2, Some(&init_states(dims.state_elems(), &before, &init)));
        ctx.ratio(&format!("{name}: {} states vs oracle", a.capabilities().backend), &sta, &r.final_state, tol);
        ctx.ratio(&format!("{name}: {} states vs oracle", b.capabilities().backend), &stb, &r.final_state, tol);
    }
    Ok(())
}
