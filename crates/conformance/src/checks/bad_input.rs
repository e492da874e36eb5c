//! DESIGN §5.8: every bad-input class gives its typed error and leaves the
//! pool digest unchanged.

use super::{sh, Ctx};
use crate::gen::{DeltaInputs, LayerInputs, LayerParams};
use crate::harness::{Batch, Bench, LAYERS};
use deltanet_core::{
    Capabilities, CommitBatch, DType, DecodeBatch, DeviceTensor, Error, ExtendBatch, KernelDispatcher, LayoutKind, MambaStatePool,
    ModelDims, PoolOf, Result, Slot, Snapshot, StateLayout, StatePool, VerifyBatch,
};

/// Runs `call`, expects an error `want` accepts, and the pool digest unchanged.
fn expect_err<D: KernelDispatcher>(
    ctx: &mut Ctx<'_>,
    pool: &PoolOf<D>,
    case: &str,
    want: &str,
    accept: impl Fn(&Error) -> bool,
    call: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let before = pool.digest()?;
    let r = call();
    let after = pool.digest()?;
    let (ok, detail) = match &r {
        Ok(()) => (false, format!("accepted; expected {want}")),
        Err(e) if accept(e) => (before == after, if before == after { format!("{e}") } else { "pool bytes changed".into() }),
        Err(e) => (false, format!("expected {want}, got {e:?}")),
    };
    ctx.exact(case, ok, detail);
    Ok(())
}

/// Every bad-input case's name starts with this.
const N: &str = "bad input";
/// Drafts per request of the fixture's pool.
const DRAFT: usize = 2;

/// What every group of cases works on: a two-layer pool of 5 slots with
/// random states, two allocated sequences `x` and `y` (plus two spare slots),
/// valid batches over them and valid inputs for each.
struct Fixture<'d, D: KernelDispatcher> {
    d: &'d D,
    caps: Capabilities,
    dims: ModelDims,
    dt: DType,
    sd: DType,
    seed: u64,
    b: Bench<'d, D>,
    slots: Vec<Slot>,
    x: Slot,
    y: Slot,
    cu: [usize; 3],
    inp: DeltaInputs,
    inp_dec: DeltaInputs,
    inp_ver: DeltaInputs,
    eb: ExtendBatch,
    db: DecodeBatch,
    vb: VerifyBatch,
    w: LayerParams,
}

impl<'d, D: KernelDispatcher> Fixture<'d, D> {
    fn new(ctx: &Ctx<'_>, d: &'d D) -> Result<Self> {
        let caps = d.capabilities().clone();
        let shape = sh(1, 2, 16, 32, false);
        let dims = shape.dims()?;
        let (dt, sd) = (Bench::default_dtype(d), Bench::default_state_dtype(d));
        let seed = ctx.seed(&[]);
        let mut b = Bench::new(d, dims, 5, sd, Some(DRAFT), dt)?;
        let slots = b.pool.alloc(4)?;
        b.randomize(&slots, seed)?;
        let (x, y) = (slots[0], slots[1]);
        let cu = [0usize, 3, 5];
        let inp = DeltaInputs::random(&dims, 5, dt, seed ^ 29);
        let eb = ExtendBatch::new(&b.pool, &cu, &[x, y], &[true, true])?;
        let db = DecodeBatch::new(&b.pool, &[x, y])?;
        let vb = VerifyBatch::chain(&b.pool, &[x, y])?;
        let (inp_dec, inp_ver) = (inp.slice(0..2), inp.slice(0..4));
        let w = LayerParams::random(&dims, seed ^ 31);
        Ok(Fixture { d, caps, dims, dt, sd, seed, b, slots, x, y, cu, inp, inp_dec, inp_ver, eb, db, vb, w })
    }
}

pub(crate) fn bad_input<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let mut f = Fixture::new(ctx, &d)?;
    pool_construction(ctx, &mut f)?;
    kernel_tensors(ctx, &mut f)?;
    foreign_batches(ctx, &mut f)?;
    batch_construction(ctx, &mut f)?;
    freed_slot(ctx, &mut f)?;
    layer_forward_input(ctx, &mut f)?;
    conv_and_gate(ctx, &mut f)?;
    Ok(())
}

/// A pool of the wrong layout for this backend, or in a state dtype it does not claim, cannot be made.
fn pool_construction<D: KernelDispatcher>(ctx: &mut Ctx<'_>, f: &mut Fixture<'_, D>) -> Result<()> {
    let (d, dims) = (f.d, f.dims);
    let caps = &f.caps;
    let b = &mut f.b;
    let n = N;
    // layout (runtime): a pool of the wrong layout for this backend cannot be made
    let mut flipped = caps.clone();
    flipped.native_layout = match D::Layout::KIND {
        LayoutKind::KMajor => LayoutKind::VMajor,
        LayoutKind::VMajor => LayoutKind::KMajor,
    };
    let r = StatePool::<D::Memory, D::Layout>::new(d.memory().clone(), b.pool.geometry().config, &flipped);
    ctx.exact(
        &format!("{n}: layout: pool with another layout's capabilities"),
        matches!(r, Err(Error::LayoutMismatch { .. })),
        format!("{:?}", r.err()),
    );
    // dtype: a state dtype the backend does not claim
    for sdt in [DType::F32, DType::BF16] {
        if !caps.state_dtypes.contains(&sdt) {
            let r = d.new_pool(deltanet_core::PoolConfig::new(1, 1, dims).with_state_dtype(sdt));
            ctx.exact(
                &format!("{n}: dtype: unclaimed state dtype {sdt}"),
                matches!(r, Err(Error::UnsupportedDType { .. })),
                format!("{:?}", r.err()),
            );
        }
    }
    Ok(())
}

/// Each kernel entry point (extend, decode, verify) with one bad tensor or index at a time: dtype, shape, stride, layer, device.
fn kernel_tensors<D: KernelDispatcher>(ctx: &mut Ctx<'_>, f: &mut Fixture<'_, D>) -> Result<()> {
    let (d, dims, dt) = (f.d, f.dims, f.dt);
    let (caps, inp, inp_dec, inp_ver, eb, db, vb) = (&f.caps, &f.inp, &f.inp_dec, &f.inp_ver, &f.eb, &f.db, &f.vb);
    let b = &mut f.b;
    let n = N;
    // dtype: g must be f32; an unclaimed input dtype
    for (label, op) in [("extend", Batch::Extend(eb)), ("decode", Batch::Decode(db)), ("verify", Batch::Verify(vb))] {
        let data = match op {
            Batch::Extend(_) => &inp,
            Batch::Decode(_) => &inp_dec,
            Batch::Verify(_) => &inp_ver,
        };
        let mut st = b.stage(data)?;
        let tt = data.tokens;
        let g16 = DeviceTensor::from_f32(d.memory(), DType::BF16, &[tt, dims.num_v_heads], &data.g)?;
        let params = b.params;
        let digest = b.pool.digest()?;
        let mut io = st.io(params);
        io.g = g16.view();
        let r = b.run_io(op, io);
        let ok = matches!(r, Err(Error::DTypeMismatch { .. })) && b.pool.digest()? == digest;
        ctx.exact(&format!("{n}: dtype: {label} with bf16 g"), ok, format!("{:?}", r.err()));
        if let Some(&bad) = [DType::F32, DType::BF16, DType::F16].iter().find(|x| !caps.input_dtypes.contains(x)) {
            let mut st2 = b.stage_as(data, bad)?;
            let r = b.run_io(op, st2.io(params));
            let ok = matches!(r, Err(Error::DTypeMismatch { .. })) && b.pool.digest()? == digest;
            ctx.exact(&format!("{n}: dtype: {label} with unclaimed input dtype {bad}"), ok, format!("{:?}", r.err()));
        }
        // shape: q with K+1, o of the wrong shape, tokens not matching the batch
        let qbad = DeviceTensor::from_f32(
            d.memory(),
            dt,
            &[tt, dims.num_k_heads, dims.head_k_dim + 1],
            &vec![0.5; tt * dims.num_k_heads * (dims.head_k_dim + 1)],
        )?;
        let mut io = st.io(params);
        io.q = qbad.view();
        let r = b.run_io(op, io);
        ctx.exact(
            &format!("{n}: shape: {label} with q of K+1"),
            matches!(r, Err(Error::ShapeMismatch { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        let mut obad = DeviceTensor::zeros(d.memory(), dt, &[tt, dims.num_v_heads, dims.head_v_dim + 1])?;
        let mut io = st.io(params);
        io.o = obad.view_mut();
        let r = b.run_io(op, io);
        ctx.exact(
            &format!("{n}: shape: {label} with o of V+1"),
            matches!(r, Err(Error::ShapeMismatch { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        let mut short = b.stage(&data.slice(0..tt - 1))?;
        let r = b.run_io(op, short.io(params));
        ctx.exact(
            &format!("{n}: shape: {label} with T-1 tokens"),
            matches!(r, Err(Error::ShapeMismatch { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        // stride: innermost stride 2 on k
        let kwide = DeviceTensor::from_f32(
            d.memory(),
            dt,
            &[tt * dims.num_k_heads * dims.head_k_dim * 2],
            &vec![0.25; tt * dims.num_k_heads * dims.head_k_dim * 2],
        )?;
        let kv = kwide.view().restride(
            0,
            &[tt, dims.num_k_heads, dims.head_k_dim],
            &[dims.num_k_heads * dims.head_k_dim * 2, dims.head_k_dim * 2, 2],
        )?;
        let mut io = st.io(params);
        io.k = kv;
        let r = b.run_io(op, io);
        ctx.exact(
            &format!("{n}: stride: {label} with innermost stride 2"),
            matches!(r, Err(Error::BadStrides { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        // index: layer out of range
        b.layer = LAYERS;
        let r = b.run_io(op, st.io(params));
        b.layer = 1;
        ctx.exact(
            &format!("{n}: index: {label} on layer {LAYERS} of {LAYERS}"),
            matches!(r, Err(Error::LayerOutOfRange { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        // device: host tensors for a device backend
        if caps.device != deltanet_core::Device::Host {
            let qh: Vec<f32> = data.q.clone();
            let qv = deltanet_core::TensorRef::from_slice(&qh, &[tt, dims.num_k_heads, dims.head_k_dim])?;
            let mut io = st.io(params);
            io.q = qv;
            let r = b.run_io(op, io);
            ctx.exact(
                &format!("{n}: device: {label} with a host q"),
                matches!(r, Err(Error::DeviceMismatch { .. })) && b.pool.digest()? == digest,
                format!("{:?}", r.err()),
            );
        }
    }
    Ok(())
}

/// Batches validated against another pool of the same backend.
fn foreign_batches<D: KernelDispatcher>(ctx: &mut Ctx<'_>, f: &mut Fixture<'_, D>) -> Result<()> {
    let (d, dims, dt, sd, cu) = (f.d, f.dims, f.dt, f.sd, f.cu);
    let (inp, inp_dec, inp_ver) = (&f.inp, &f.inp_dec, &f.inp_ver);
    let b = &mut f.b;
    let n = N;
    let draft = DRAFT;
    // foreign batch: validated against another pool of the same backend
    {
        let other = Bench::new(d, dims, 5, sd, Some(draft), dt)?;
        let os = other.pool.alloc(2)?;
        let feb = ExtendBatch::new(&other.pool, &cu, &os, &[true, true])?;
        let fdb = DecodeBatch::new(&other.pool, &os)?;
        let fvb = VerifyBatch::chain(&other.pool, &os)?;
        let fcb = CommitBatch::new(&other.pool, &os, &[Some(0), Some(1)], &[])?;
        for (label, op, data) in
            [("extend", Batch::Extend(&feb), &inp), ("decode", Batch::Decode(&fdb), &inp_dec), ("verify", Batch::Verify(&fvb), &inp_ver)]
        {
            let digest = b.pool.digest()?;
            let r = b.run(op, data).map(|_| ());
            ctx.exact(
                &format!("{n}: foreign batch: {label}"),
                matches!(r, Err(Error::ForeignBatch { .. })) && b.pool.digest()? == digest,
                format!("{:?}", r.err()),
            );
        }
        let digest = b.pool.digest()?;
        let r = b.commit(&fcb);
        ctx.exact(
            &format!("{n}: foreign batch: commit"),
            matches!(r, Err(Error::ForeignBatch { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
    }
    Ok(())
}

/// Batch constructors: cu_seqlens, slots, draft and accepted counts, snapshot positions.
fn batch_construction<D: KernelDispatcher>(ctx: &mut Ctx<'_>, f: &mut Fixture<'_, D>) -> Result<()> {
    let (cu, x, y) = (f.cu, f.x, f.y);
    let (slots, eb) = (&f.slots, &f.eb);
    let b = &mut f.b;
    let n = N;
    let draft = DRAFT;
    let is = |f: fn(&Error) -> bool| f;
    // batch construction: cu_seqlens, slots, draft / accepted counts, snapshot positions
    let never = {
        let s = b.pool.alloc(1)?;
        b.pool.free(&s)?;
        s[0]
    };
    let p = &b.pool;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: cu_seqlens not increasing"),
        "BadCuSeqlens",
        is(|e| matches!(e, Error::BadCuSeqlens { .. })),
        || ExtendBatch::new(p, &[0, 3, 3], &[x, y], &[true, true]).map(|_| ()),
    )?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: cu_seqlens not from 0"),
        "BadCuSeqlens",
        is(|e| matches!(e, Error::BadCuSeqlens { .. })),
        || ExtendBatch::new(p, &[2, 3], &[x], &[true]).map(|_| ()),
    )?;
    expect_err::<D>(ctx, p, &format!("{n}: slot: padding slot"), "PaddingSlot", is(|e| matches!(e, Error::PaddingSlot { .. })), || {
        DecodeBatch::new(p, &[Slot::new(0, 0)]).map(|_| ())
    })?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: slot: out of range"),
        "SlotOutOfRange",
        is(|e| matches!(e, Error::SlotOutOfRange { .. })),
        || DecodeBatch::new(p, &[Slot::new(1000, 0)]).map(|_| ()),
    )?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: slot: not allocated"),
        "SlotNotAllocated",
        is(|e| matches!(e, Error::SlotNotAllocated { .. })),
        || DecodeBatch::new(p, &[x, never]).map(|_| ()),
    )?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: slot: twice in one batch"),
        "DuplicateSlot",
        is(|e| matches!(e, Error::DuplicateSlot { .. })),
        || ExtendBatch::new(p, &cu, &[y, y], &[true, true]).map(|_| ()),
    )?;
    expect_err::<D>(ctx, p, &format!("{n}: verify of no requests"), "EmptyBatch", is(|e| matches!(e, Error::EmptyBatch { .. })), || {
        VerifyBatch::chain(p, &[]).map(|_| ())
    })?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: snapshot of a skipped request"),
        "SnapshotOfSkipped",
        is(|e| matches!(e, Error::SnapshotOfSkipped { .. })),
        || CommitBatch::new(p, &[x], &[None], &[Some(slots[2])]).map(|_| ()),
    )?;
    expect_err::<D>(ctx, p, &format!("{n}: tree parent"), "BadParent", is(|e| matches!(e, Error::BadParent { .. })), || {
        VerifyBatch::tree(p, &[x], &[-1, 1]).map(|_| ())
    })?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: accepted >= D"),
        "AcceptedOutOfRange",
        is(|e| matches!(e, Error::AcceptedOutOfRange { .. })),
        || CommitBatch::new(p, &[x], &[Some(draft)], &[]).map(|_| ()),
    )?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: snapshot position past the extend"),
        "BadSnapshot",
        is(|e| matches!(e, Error::BadSnapshot { .. })),
        || eb.clone().with_snapshots(p, &[Snapshot { seq: 1, position: 3, slot: slots[2] }]).map(|_| ()),
    )?;
    expect_err::<D>(ctx, p, &format!("{n}: snapshot position 0"), "BadSnapshot", is(|e| matches!(e, Error::BadSnapshot { .. })), || {
        eb.clone().with_snapshots(p, &[Snapshot { seq: 0, position: 0, slot: slots[2] }]).map(|_| ())
    })?;
    Ok(())
}

/// A slot freed after its batch was validated: the kernel re-checks.
fn freed_slot<D: KernelDispatcher>(ctx: &mut Ctx<'_>, f: &mut Fixture<'_, D>) -> Result<()> {
    let (cu, x) = (f.cu, f.x);
    let (slots, inp) = (&f.slots, &f.inp);
    let b = &mut f.b;
    let n = N;
    // slot freed after validation: the kernel re-checks
    let eb2 = ExtendBatch::new(&b.pool, &cu, &[x, slots[3]], &[true, true])?;
    b.pool.free(&[slots[3]])?;
    let digest = b.pool.digest()?;
    let r = b.run(Batch::Extend(&eb2), inp).map(|_| ());
    ctx.exact(
        &format!("{n}: slot freed after the batch was validated"),
        matches!(r, Err(Error::SlotNotAllocated { .. })) && b.pool.digest()? == digest,
        format!("{:?}", r.err()),
    );
    Ok(())
}

/// Through the layer forward: a bad mixed_qkv leaves conv and recurrent state unchanged.
fn layer_forward_input<D: KernelDispatcher>(ctx: &mut Ctx<'_>, f: &mut Fixture<'_, D>) -> Result<()> {
    let (dims, dt, seed) = (f.dims, f.dt, f.seed);
    let (eb, w) = (&f.eb, &f.w);
    let b = &mut f.b;
    let n = N;
    // through the layer forward: a bad mixed_qkv leaves conv and recurrent state unchanged
    let mut li = LayerInputs::random(&dims, 5, dt, seed ^ 37);
    li = li.slice(0..4);
    let digest = b.pool.digest()?;
    let r = b.layer(Batch::Extend(eb), w, &li).map(|_| ());
    ctx.exact(
        &format!("{n}: layer forward with T-1 tokens"),
        matches!(r, Err(Error::ShapeMismatch { .. })) && b.pool.digest()? == digest,
        format!("{:?}", r.err()),
    );
    Ok(())
}

/// The separate conv and gate entry points.
fn conv_and_gate<D: KernelDispatcher>(ctx: &mut Ctx<'_>, f: &mut Fixture<'_, D>) -> Result<()> {
    let (d, dims, dt, x, y) = (f.d, f.dims, f.dt, f.x, f.y);
    let (eb, w) = (&f.eb, &f.w);
    let b = &mut f.b;
    let n = N;
    // the separate conv and gate entry points
    let m = d.memory();
    let c = dims.conv_dim();
    let cw = DeviceTensor::from_f32(m, DType::F32, &[c, dims.conv_width], &w.conv_weight)?;
    let cw16 = DeviceTensor::from_f32(m, DType::BF16, &[c, dims.conv_width], &w.conv_weight)?;
    let db2 = DecodeBatch::new(&b.pool, &[x, y])?;
    let vb2 = VerifyBatch::chain(&b.pool, &[x, y])?;
    for (label, tokens) in [("conv_extend", 5usize), ("conv_update", 2), ("conv_verify", 4)] {
        for (what, x_tokens, x_dim, weight_bf16) in
            [("x of T-1 tokens", tokens - 1, c, false), ("x of conv_dim+1", tokens, c + 1, false), ("bf16 weight", tokens, c, true)]
        {
            let xin = DeviceTensor::from_f32(m, dt, &[x_tokens, x_dim], &vec![0.5; x_tokens * x_dim])?;
            let mut out = DeviceTensor::zeros(m, dt, &[tokens, c])?;
            let io = deltanet_core::ConvIo {
                x: xin.view(),
                weight: if weight_bf16 { cw16.view() } else { cw.view() },
                bias: None,
                out: out.view_mut(),
            };
            let digest = b.pool.digest()?;
            let r = match label {
                "conv_extend" => d.conv_extend(&mut b.pool, 1, eb, io),
                "conv_update" => d.conv_update(&mut b.pool, 1, &db2, io),
                _ => d.conv_verify(&mut b.pool, 1, &vb2, io),
            };
            let ok =
                if weight_bf16 { matches!(r, Err(Error::DTypeMismatch { .. })) } else { matches!(r, Err(Error::ShapeMismatch { .. })) };
            ctx.exact(&format!("{n}: {label} with {what}"), ok && b.pool.digest()? == digest, format!("{:?}", r.err()));
        }
    }
    let hv = dims.num_v_heads;
    let ab = DeviceTensor::from_f32(m, dt, &[5, hv], &vec![0.1; 5 * hv])?;
    let al16 = DeviceTensor::from_f32(m, DType::BF16, &[hv], &w.a_log)?;
    let al = DeviceTensor::from_f32(m, DType::F32, &[hv], &w.a_log)?;
    let dtb = DeviceTensor::from_f32(m, DType::F32, &[hv], &w.dt_bias)?;
    let (mut g, mut beta) = (DeviceTensor::zeros(m, DType::F32, &[5, hv])?, DeviceTensor::zeros(m, DType::F32, &[5, hv])?);
    let io = deltanet_core::GateIo {
        a: ab.view(),
        b: ab.view(),
        a_log: al16.view(),
        dt_bias: dtb.view(),
        g: g.view_mut(),
        beta: beta.view_mut(),
    };
    let r = d.gate(&dims, io);
    ctx.exact(&format!("{n}: gate with bf16 A_log"), matches!(r, Err(Error::DTypeMismatch { .. })), format!("{:?}", r.err()));
    let mut g4 = DeviceTensor::zeros(m, DType::F32, &[4, hv])?;
    let io = deltanet_core::GateIo {
        a: ab.view(),
        b: ab.view(),
        a_log: al.view(),
        dt_bias: dtb.view(),
        g: g4.view_mut(),
        beta: beta.view_mut(),
    };
    let r = d.gate(&dims, io);
    ctx.exact(&format!("{n}: gate with g of T-1 tokens"), matches!(r, Err(Error::ShapeMismatch { .. })), format!("{:?}", r.err()));
    Ok(())
}
