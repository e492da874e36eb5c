//! Entry points of the operations: gate, conv (extend / update / verify),
//! the delta rule (extend / decode / verify), commit, and the layer forward.
//! Each reads its tensors as DLPack views, refuses outputs that alias any
//! tensor of the call, and hands everything to the runtime `Backend`, which
//! validates every view and the batch before the first byte is written: a
//! call that fails changed no pool state and no output.
//!
//! Tensor contract (every `const DLTensor *` here): it describes memory on the
//! backend's device that holds the tensor as stated and stays valid for the
//! call; outputs are not read or written by anyone else during the call.
//!
//! Thread safety: any thread; calls on one pool are serialised by its lock.
//! Calls that write caller tensors must not share output memory across
//! threads (as with any C function writing a buffer).

use crate::args;
use crate::dlpack::{check_disjoint, view, view_opt, DLTensor, View};
use crate::handles::{self, dn_backend, dn_batch, dn_pool, BatchObj, PoolObj};
use crate::status::{dn_status, guard, CResult};
use crate::types::{dims_from, dn_delta_params, dn_layer_weights, dn_model_dims, params_from};
use facade::{CommitBatch, ConvIo, DecodeBatch, DeltaIo, DeltaParams, ExtendBatch, GateIo, LayerInput, LayerWeights, VerifyBatch};
use std::sync::MutexGuard;

fn wrong_kind(b: &BatchObj, want: &str) -> crate::status::Failure {
    args::invalid(format!("a {} batch was passed where {want} batch is needed", b.kind()))
}

fn extend_of(b: &BatchObj) -> CResult<&ExtendBatch> {
    if let BatchObj::Extend(x) = b {
        return Ok(x);
    }
    Err(wrong_kind(b, "an extend"))
}

fn decode_of(b: &BatchObj) -> CResult<&DecodeBatch> {
    if let BatchObj::Decode(x) = b {
        return Ok(x);
    }
    Err(wrong_kind(b, "a decode"))
}

fn verify_of(b: &BatchObj) -> CResult<&VerifyBatch> {
    if let BatchObj::Verify(x) = b {
        return Ok(x);
    }
    Err(wrong_kind(b, "a verify"))
}

fn commit_of(b: &BatchObj) -> CResult<&CommitBatch> {
    if let BatchObj::Commit(x) = b {
        return Ok(x);
    }
    Err(wrong_kind(b, "a commit"))
}

/// The live handles of a pool operation: backend, locked pool, batch.
fn with_handles<R>(
    backend: *const dn_backend,
    pool: *const dn_pool,
    batch: *const dn_batch,
    run: impl FnOnce(&facade::Backend, &mut MutexGuard<'_, PoolObj>, &BatchObj) -> CResult<R>,
) -> CResult<R> {
    let b = handles::backend(backend)?;
    let p = handles::pool(pool)?;
    let bt = handles::batch(batch)?;
    let mut g = handles::lock(&p)?;
    run(&b.backend, &mut g, &bt)
}

/// Reads the tensors of a delta-rule call (and the params for the pool's dims).
///
/// # Safety
/// Each tensor as the module's contract; `params` NULL or readable.
#[allow(clippy::too_many_arguments)]
unsafe fn delta_views(
    g: &PoolObj,
    q: *const DLTensor,
    k: *const DLTensor,
    v: *const DLTensor,
    gate: *const DLTensor,
    beta: *const DLTensor,
    o: *const DLTensor,
    params: *const dn_delta_params,
) -> CResult<([View; 5], View, DeltaParams)> {
    // SAFETY: caller's contract for every pointer.
    let (ins, o, p) = unsafe {
        (
            [view("q", q)?, view("k", k)?, view("v", v)?, view("g", gate)?, view("beta", beta)?],
            view("o", o)?,
            args::read_opt(params, "params")?,
        )
    };
    check_disjoint(&ins, &[o])?;
    let dims = g.pool.as_dyn().geometry().config.dims;
    Ok((ins, o, params_from(p, &dims)?))
}

fn delta_io<'a>(ins: &[View; 5], o: &View, params: DeltaParams) -> DeltaIo<'a> {
    // SAFETY: the module's tensor contract (stated in the header); the output
    // was proven disjoint from every input by `delta_views`.
    unsafe {
        DeltaIo {
            q: ins[0].as_ref(),
            k: ins[1].as_ref(),
            v: ins[2].as_ref(),
            g: ins[3].as_ref(),
            beta: ins[4].as_ref(),
            o: o.as_mut(),
            params,
        }
    }
}

/// Reads the tensors of a conv call.
///
/// # Safety
/// Each tensor as the module's contract (`bias` may be NULL).
unsafe fn conv_io<'a>(x: *const DLTensor, weight: *const DLTensor, bias: *const DLTensor, out: *const DLTensor) -> CResult<ConvIo<'a>> {
    // SAFETY: caller's contract.
    let (x, w, b, o) = unsafe { (view("x", x)?, view("conv_weight", weight)?, view_opt("conv_bias", bias)?, view("conv_out", out)?) };
    let mut ins = vec![x, w];
    ins.extend(b);
    check_disjoint(&ins, &[o])?;
    // SAFETY: the module's tensor contract; the output is disjoint from the inputs (checked above).
    Ok(unsafe { ConvIo { x: x.as_ref(), weight: w.as_ref(), bias: b.map(|b| b.as_ref()), out: o.as_mut() } })
}

/// The gate over `T` tokens: `g = -exp(A_log) * softplus(a + dt_bias)`,
/// `beta = sigmoid(b)`. `a, b: [T, HV]` (input dtypes), `a_log, dt_bias:
/// [HV]` f32, outputs `g, beta: [T, HV]` f32. Touches no pool.
///
/// Thread safety: any thread; touches no pool.
///
/// # Safety
/// `dims` is readable; tensors as the module's contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_gate(
    backend: *const dn_backend,
    dims: *const dn_model_dims,
    a: *const DLTensor,
    b: *const DLTensor,
    a_log: *const DLTensor,
    dt_bias: *const DLTensor,
    g: *const DLTensor,
    beta: *const DLTensor,
) -> dn_status {
    guard(|| {
        let bk = handles::backend(backend)?;
        // SAFETY: caller's contract for every pointer.
        let (dims, ins, outs) = unsafe {
            (
                dims_from(args::read(dims, "dims")?)?,
                [view("a", a)?, view("b", b)?, view("A_log", a_log)?, view("dt_bias", dt_bias)?],
                [view("g", g)?, view("beta", beta)?],
            )
        };
        check_disjoint(&ins, &outs)?;
        // SAFETY: the module's tensor contract; outputs disjoint from inputs and each other.
        let io = unsafe {
            GateIo {
                a: ins[0].as_ref(),
                b: ins[1].as_ref(),
                a_log: ins[2].as_ref(),
                dt_bias: ins[3].as_ref(),
                g: outs[0].as_mut(),
                beta: outs[1].as_mut(),
            }
        };
        Ok(bk.backend.gate(&dims, io)?)
    })
}

/// Conv over the packed sequences of an extend batch (`x, out: [T, conv_dim]`,
/// `weight: [conv_dim, W]` f32, `bias: [conv_dim]` f32 or NULL; SiLU applied):
/// starts from each slot's conv state when `has_initial_state`, leaves the
/// last W-1 raw inputs in it, writes snapshot conv states.
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// Tensors as the module's contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_conv_extend(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    x: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    out: *const DLTensor,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |b, g, bt| {
            let batch = extend_of(bt)?;
            // SAFETY: caller's contract.
            let io = unsafe { conv_io(x, weight, bias, out) }?;
            Ok(b.conv_extend(&mut g.pool, layer, batch, io)?)
        })
    })
}

/// Conv of one token per request of a decode batch, updating each slot's conv state.
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// Tensors as the module's contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_conv_update(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    x: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    out: *const DLTensor,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |b, g, bt| {
            let batch = decode_of(bt)?;
            // SAFETY: caller's contract.
            let io = unsafe { conv_io(x, weight, bias, out) }?;
            Ok(b.conv_update(&mut g.pool, layer, batch, io)?)
        })
    })
}

/// Conv of the draft tokens of a verify batch: each step convolves on its
/// parent's window and writes its window to the scratch; slot conv states untouched.
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// Tensors as the module's contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_conv_verify(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    x: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    out: *const DLTensor,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |b, g, bt| {
            let batch = verify_of(bt)?;
            // SAFETY: caller's contract.
            let io = unsafe { conv_io(x, weight, bias, out) }?;
            Ok(b.conv_verify(&mut g.pool, layer, batch, io)?)
        })
    })
}

/// Chunked delta rule over an extend batch, in place on the slots (from
/// each slot's state when `has_initial_state`, else zero), with snapshots.
/// `q, k: [T, HK, K]`, `v: [T, HV, V]`, `g: [T, HV]` f32, `beta: [T, HV]`,
/// output `o: [T, HV, V]`; `params` NULL for the defaults.
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// Tensors as the module's contract; `params` NULL or readable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_extend(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    q: *const DLTensor,
    k: *const DLTensor,
    v: *const DLTensor,
    g: *const DLTensor,
    beta: *const DLTensor,
    o: *const DLTensor,
    params: *const dn_delta_params,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |b, pg, bt| {
            let batch = extend_of(bt)?;
            // SAFETY: caller's contract.
            let (ins, o, p) = unsafe { delta_views(pg, q, k, v, g, beta, o, params) }?;
            Ok(b.extend(&mut pg.pool, layer, batch, delta_io(&ins, &o, p))?)
        })
    })
}

/// One decode token per request of a decode batch, in place (shapes as
/// `dn_extend` with T = requests).
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// Tensors as the module's contract; `params` NULL or readable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_decode(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    q: *const DLTensor,
    k: *const DLTensor,
    v: *const DLTensor,
    g: *const DLTensor,
    beta: *const DLTensor,
    o: *const DLTensor,
    params: *const dn_delta_params,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |b, pg, bt| {
            let batch = decode_of(bt)?;
            // SAFETY: caller's contract.
            let (ins, o, p) = unsafe { delta_views(pg, q, k, v, g, beta, o, params) }?;
            Ok(b.decode(&mut pg.pool, layer, batch, delta_io(&ins, &o, p))?)
        })
    })
}

/// Draft tokens of a verify batch (T = requests * D, request-major): each
/// step from its parent's state, written to the scratch; main state untouched
/// until `dn_commit`.
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// Tensors as the module's contract; `params` NULL or readable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_verify(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    q: *const DLTensor,
    k: *const DLTensor,
    v: *const DLTensor,
    g: *const DLTensor,
    beta: *const DLTensor,
    o: *const DLTensor,
    params: *const dn_delta_params,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |b, pg, bt| {
            let batch = verify_of(bt)?;
            // SAFETY: caller's contract.
            let (ins, o, p) = unsafe { delta_views(pg, q, k, v, g, beta, o, params) }?;
            Ok(b.verify(&mut pg.pool, layer, batch, delta_io(&ins, &o, p))?)
        })
    })
}

/// Commit of one layer: each request's accepted scratch step (state and conv
/// window) becomes its slot's state (and its snapshot slot's).
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
#[no_mangle]
pub extern "C" fn dn_commit(backend: *const dn_backend, pool: *const dn_pool, layer: usize, batch: *const dn_batch) -> dn_status {
    guard(|| with_handles(backend, pool, batch, |b, g, bt| Ok(b.commit(&mut g.pool, layer, commit_of(bt)?)?)))
}

/// Reads the tensors of a layer forward.
///
/// # Safety
/// `weights` readable with tensors as the module's contract; the same for the other tensors.
unsafe fn layer_views(
    weights: *const dn_layer_weights,
    mixed_qkv: *const DLTensor,
    a: *const DLTensor,
    b: *const DLTensor,
    out: *const DLTensor,
) -> CResult<(Vec<View>, View)> {
    // SAFETY: caller's contract.
    unsafe {
        let w = args::read(weights, "weights")?;
        let mut ins = vec![view("A_log", w.a_log)?, view("dt_bias", w.dt_bias)?, view("conv_weight", w.conv_weight)?];
        ins.extend(view_opt("conv_bias", w.conv_bias)?);
        ins.extend([view("mixed_qkv", mixed_qkv)?, view("a", a)?, view("b", b)?]);
        let out = view("out", out)?;
        check_disjoint(&ins, &[out])?;
        Ok((ins, out))
    }
}

/// Runs one layer forward kind on the views `layer_views` read.
fn run_layer(
    ins: &[View],
    out: &View,
    params: DeltaParams,
    run: impl FnOnce(&LayerWeights<'_>, &LayerInput<'_>, DeltaParams, facade::TensorMut<'_>) -> facade::Result<()>,
) -> CResult {
    let has_bias = ins.len() == 7;
    let r = |i: usize| {
        // SAFETY: the module's tensor contract; the output is disjoint from every input (`layer_views`).
        unsafe { ins[i].as_ref() }
    };
    let weights = LayerWeights { a_log: r(0), dt_bias: r(1), conv_weight: r(2), conv_bias: has_bias.then(|| r(3)) };
    let base = if has_bias { 4 } else { 3 };
    let input = LayerInput { mixed_qkv: r(base), a: r(base + 1), b: r(base + 2) };
    // SAFETY: as above.
    let out = unsafe { out.as_mut() };
    Ok(run(&weights, &input, params, out)?)
}

/// The layer forward of an extend batch: conv (from and into each slot's
/// conv state), gate, chunked delta rule, in one call. `mixed_qkv: [T,
/// conv_dim]` (`[q | k | v]` before the conv), `a, b: [T, HV]`, `out: [T, HV, V]`.
/// Allocates its scratch (conv output, g, beta) per call.
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// `weights` readable; tensors as the module's contract; `params` NULL or readable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_forward_extend(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    weights: *const dn_layer_weights,
    mixed_qkv: *const DLTensor,
    a: *const DLTensor,
    b: *const DLTensor,
    params: *const dn_delta_params,
    out: *const DLTensor,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |bk, g, bt| {
            let batch = extend_of(bt)?;
            // SAFETY: caller's contract.
            let (ins, o) = unsafe { layer_views(weights, mixed_qkv, a, b, out) }?;
            // SAFETY: caller's contract.
            let p = params_from(unsafe { args::read_opt(params, "params") }?, &g.pool.as_dyn().geometry().config.dims)?;
            run_layer(&ins, &o, p, |w, x, p, out| bk.forward_extend(&mut g.pool, layer, batch, w, x, p, out))
        })
    })
}

/// The layer forward of a decode batch (as `dn_forward_extend`, T = requests).
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// As `dn_forward_extend`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_forward_decode(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    weights: *const dn_layer_weights,
    mixed_qkv: *const DLTensor,
    a: *const DLTensor,
    b: *const DLTensor,
    params: *const dn_delta_params,
    out: *const DLTensor,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |bk, g, bt| {
            let batch = decode_of(bt)?;
            // SAFETY: caller's contract.
            let (ins, o) = unsafe { layer_views(weights, mixed_qkv, a, b, out) }?;
            // SAFETY: caller's contract.
            let p = params_from(unsafe { args::read_opt(params, "params") }?, &g.pool.as_dyn().geometry().config.dims)?;
            run_layer(&ins, &o, p, |w, x, p, out| bk.forward_decode(&mut g.pool, layer, batch, w, x, p, out))
        })
    })
}

/// The layer forward of a verify batch (as `dn_forward_extend`, T = requests * D;
/// states go to the scratch until `dn_commit`).
///
/// Thread safety: any thread; serialised with every other call on this pool; its output tensors must not be used by another running call.
///
/// # Safety
/// As `dn_forward_extend`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dn_forward_verify(
    backend: *const dn_backend,
    pool: *const dn_pool,
    layer: usize,
    batch: *const dn_batch,
    weights: *const dn_layer_weights,
    mixed_qkv: *const DLTensor,
    a: *const DLTensor,
    b: *const DLTensor,
    params: *const dn_delta_params,
    out: *const DLTensor,
) -> dn_status {
    guard(|| {
        with_handles(backend, pool, batch, |bk, g, bt| {
            let batch = verify_of(bt)?;
            // SAFETY: caller's contract.
            let (ins, o) = unsafe { layer_views(weights, mixed_qkv, a, b, out) }?;
            // SAFETY: caller's contract.
            let p = params_from(unsafe { args::read_opt(params, "params") }?, &g.pool.as_dyn().geometry().config.dims)?;
            run_layer(&ins, &o, p, |w, x, p, out| bk.forward_verify(&mut g.pool, layer, batch, w, x, p, out))
        })
    })
}
