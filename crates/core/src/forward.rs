//! The layer forward: conv → gate → delta rule over the pool, for one GDN
//! layer and one batch, written once over [`KernelDispatcher`].
//!
//! This is where engines have shipped wrong answers from branches on "is
//! speculative decoding on" or "is this the NPU". There is no such branch
//! here: the layout and dtypes were fixed when the pool was made, and the
//! four entry points differ only in which batch type and which two kernels
//! they hand to the one shared body, `run_layer`.

use crate::access::KernelAccess;
use crate::batch::{CommitBatch, DecodeBatch, ExtendBatch, VerifyBatch};
use crate::checked::{Checked, GateCall, Ticket};
use crate::dims::{DeltaParams, ModelDims};
use crate::dispatch::{KernelDispatcher, PoolOf};
use crate::dtype::DType;
use crate::error::Result;
use crate::kernel_io::{ConvIo, DeltaIo, GateIo};
use crate::memory::DeviceMemory;
use crate::tensor::{TensorMeta, TensorMut, TensorRef};

/// A layer's weights.
#[derive(Debug, Clone, Copy)]
pub struct LayerWeights<'a> {
    /// `[HV]`, f32.
    pub a_log: TensorRef<'a>,
    /// `[HV]`, f32.
    pub dt_bias: TensorRef<'a>,
    /// `[conv_dim, W]`, f32.
    pub conv_weight: TensorRef<'a>,
    /// `[conv_dim]`, f32.
    pub conv_bias: Option<TensorRef<'a>>,
}

/// A layer's per-token inputs (the projections of the hidden states).
#[derive(Debug, Clone, Copy)]
pub struct LayerInput<'a> {
    /// `[T, conv_dim]`: `[q | k | v]` before the conv.
    pub mixed_qkv: TensorRef<'a>,
    /// `[T, HV]`: gate input.
    pub a: TensorRef<'a>,
    /// `[T, HV]`: beta input.
    pub b: TensorRef<'a>,
}

/// Device scratch for the layer forward (conv output, g, beta), grown on
/// demand and reused across calls and layers.
///
/// The conv output is q, k and v of the delta rule, so it is held in an input
/// dtype the backend accepts ([`conv_out_dtype`]); g and beta are f32.
pub struct LayerWorkspace<M: DeviceMemory> {
    memory: M,
    conv_out: Option<M::Buffer>,
    /// The dtype of the conv output, set by `ensure`.
    conv_dtype: DType,
    g: Option<M::Buffer>,
    beta: Option<M::Buffer>,
    conv_cap: usize,
    gate_cap: usize,
}

impl<M: DeviceMemory> LayerWorkspace<M> {
    /// An empty workspace on `memory`.
    pub fn new(memory: M) -> Self {
        LayerWorkspace { memory, conv_out: None, conv_dtype: DType::F32, g: None, beta: None, conv_cap: 0, gate_cap: 0 }
    }

    fn ensure(&mut self, dims: &ModelDims, tokens: usize, conv_dtype: DType) -> Result<()> {
        self.conv_dtype = conv_dtype;
        let conv = tokens * dims.conv_dim() * conv_dtype.size();
        let gate = tokens * dims.num_v_heads * 4;
        if conv > self.conv_cap {
            self.conv_out = Some(self.memory.alloc_zeroed(conv)?);
            self.conv_cap = conv;
        }
        if gate > self.gate_cap {
            self.g = Some(self.memory.alloc_zeroed(gate)?);
            self.beta = Some(self.memory.alloc_zeroed(gate)?);
            self.gate_cap = gate;
        }
        Ok(())
    }

    fn meta(&self, dtype: DType, shape: &[usize], strides: &[usize]) -> Result<TensorMeta> {
        TensorMeta::strided(self.memory.device(), dtype, shape, strides)
    }

    fn conv_out_mut(&mut self, dims: &ModelDims, t: usize) -> Result<TensorMut<'_>> {
        let meta = self.meta(self.conv_dtype, &[t, dims.conv_dim()], &[dims.conv_dim(), 1])?;
        let buf = self.conv_out.as_mut().expect("ensured");
        // SAFETY: the buffer holds at least t*conv_dim elements of `conv_dtype` (ensured) and is borrowed mutably for the view's life.
        Ok(unsafe { TensorMut::from_raw(self.memory.addr(buf), meta) })
    }

    /// q, k, v as strided views into the conv output `[T, conv_dim]`.
    fn qkv(&self, dims: &ModelDims, t: usize) -> Result<[TensorRef<'_>; 3]> {
        let (hk, hv, k, v, c) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim, dims.conv_dim());
        let buf = self.conv_out.as_ref().expect("ensured");
        let (base, dt) = (self.memory.addr(buf), self.conv_dtype);
        let view = |off: usize, shape: [usize; 3], strides: [usize; 3]| -> Result<TensorRef<'_>> {
            let meta = self.meta(dt, &shape, &strides)?;
            // SAFETY: off + span <= t*conv_dim elements of `dt` inside the ensured buffer, borrowed shared for the view's life.
            Ok(unsafe { TensorRef::from_raw(base + (off * dt.size()) as u64, meta) })
        };
        Ok([view(0, [t, hk, k], [c, k, 1])?, view(hk * k, [t, hk, k], [c, k, 1])?, view(2 * hk * k, [t, hv, v], [c, v, 1])?])
    }

    fn gate_out_mut(&mut self, dims: &ModelDims, t: usize) -> Result<[TensorMut<'_>; 2]> {
        let meta = self.meta(DType::F32, &[t, dims.num_v_heads], &[dims.num_v_heads, 1])?;
        let (g, b) = (self.g.as_mut().expect("ensured"), self.beta.as_mut().expect("ensured"));
        // SAFETY: two distinct buffers of >= t*HV f32 each, each borrowed mutably for its view's life.
        Ok(unsafe { [TensorMut::from_raw(self.memory.addr(g), meta), TensorMut::from_raw(self.memory.addr(b), meta)] })
    }

    fn gate_out(&self, dims: &ModelDims, t: usize) -> Result<[TensorRef<'_>; 2]> {
        let meta = self.meta(DType::F32, &[t, dims.num_v_heads], &[dims.num_v_heads, 1])?;
        let (g, b) = (self.g.as_ref().expect("ensured"), self.beta.as_ref().expect("ensured"));
        // SAFETY: as in `gate_out_mut`, borrowed shared.
        Ok(unsafe { [TensorRef::from_raw(self.memory.addr(g), meta), TensorRef::from_raw(self.memory.addr(b), meta)] })
    }
}

/// The dtype of the layer forward's conv output (q, k, v of the delta rule):
/// f32 where the backend accepts it (CPU, CUDA: full precision between the
/// kernels), else the first input dtype it accepts (the NPU's operators take
/// bf16 only). With no input dtype at all, f32, and validation names the mismatch.
fn conv_out_dtype(caps: &crate::Capabilities) -> DType {
    if caps.input_dtypes.contains(&DType::F32) {
        DType::F32
    } else {
        caps.input_dtypes.first().copied().unwrap_or(DType::F32)
    }
}

/// The shared body of every forward: validate everything once, then conv,
/// gate, delta rule. `conv` and `delta` are the batch-specific kernels, run
/// on calls checked here; nothing here knows which batch type, backend,
/// layout or dtype it runs.
#[allow(clippy::too_many_arguments)]
fn run_layer<'c, D: KernelDispatcher, B>(
    d: &D,
    pool: &mut PoolOf<D>,
    (layer, batch, conv_access, delta_access): (usize, &'c B, KernelAccess<'c>, KernelAccess<'c>),
    tokens: usize,
    w: &LayerWeights<'c>,
    x: &LayerInput<'c>,
    params: DeltaParams,
    ws: &mut LayerWorkspace<D::Memory>,
    mut out: TensorMut<'c>,
    conv: impl FnOnce(&mut PoolOf<D>, Checked<'_, B, ConvIo<'_>>) -> Result<()>,
    delta: impl FnOnce(&mut PoolOf<D>, Checked<'_, B, DeltaIo<'_>>) -> Result<()>,
) -> Result<()> {
    let caps = d.capabilities();
    // The pool, the layer and the capabilities once (the conv and the delta
    // rule read the same slots), then all three stages' tensors before the
    // first one writes the pool, so a bad tensor for the delta rule cannot
    // leave a half-updated conv state behind.
    let conv_ticket = Ticket::check(caps, pool, layer, conv_access)?;
    let delta_ticket = conv_ticket.with_access(delta_access);
    let dims = conv_ticket.geometry().config.dims;
    ws.ensure(&dims, tokens, conv_out_dtype(caps))?;
    ConvIo { x: x.mixed_qkv, weight: w.conv_weight, bias: w.conv_bias, out: ws.conv_out_mut(&dims, tokens)? }
        .validate(caps, &dims, tokens)?;
    let [g, beta] = ws.gate_out_mut(&dims, tokens)?;
    GateIo { a: x.a, b: x.b, a_log: w.a_log, dt_bias: w.dt_bias, g, beta }.validate(caps, &dims, tokens)?;
    {
        let [q, k, v] = ws.qkv(&dims, tokens)?;
        let [g, beta] = ws.gate_out(&dims, tokens)?;
        DeltaIo { q, k, v, g, beta, o: out.reborrow(), params }.validate(caps, &dims, tokens)?;
    }
    crate::finite::check_layer(pool, layer, delta_access, x)?;

    let conv_out = ws.conv_out_mut(&dims, tokens)?;
    conv(pool, Checked::trusted(conv_ticket, batch, ConvIo { x: x.mixed_qkv, weight: w.conv_weight, bias: w.conv_bias, out: conv_out }))?;
    let [g, beta] = ws.gate_out_mut(&dims, tokens)?;
    d.run_gate(GateCall::trusted(dims, tokens, GateIo { a: x.a, b: x.b, a_log: w.a_log, dt_bias: w.dt_bias, g, beta }))?;
    let [q, k, v] = ws.qkv(&dims, tokens)?;
    let [g, beta] = ws.gate_out(&dims, tokens)?;
    delta(pool, Checked::trusted(delta_ticket, batch, DeltaIo { q, k, v, g, beta, o: out, params }))
}

/// Prefill / chunked prefill of one layer: conv from each slot's conv state,
/// gate, chunked delta rule from each slot's state; states and snapshots written back.
#[allow(clippy::too_many_arguments)]
pub fn forward_extend<D: KernelDispatcher>(
    d: &D,
    pool: &mut PoolOf<D>,
    layer: usize,
    batch: &ExtendBatch,
    weights: &LayerWeights<'_>,
    input: &LayerInput<'_>,
    params: DeltaParams,
    ws: &mut LayerWorkspace<D::Memory>,
    out: TensorMut<'_>,
) -> Result<()> {
    let _span = tracing::info_span!("forward_extend", backend = %d.capabilities().backend, layer, sequences = batch.num_seqs(), tokens = batch.tokens()).entered();
    let access = KernelAccess::Extend(batch);
    run_layer(
        d,
        pool,
        (layer, batch, access, access),
        batch.tokens(),
        weights,
        input,
        params,
        ws,
        out,
        |p, call| d.run_conv_extend(p, call),
        |p, call| d.run_extend(p, call),
    )
}

/// One decode step of one layer, in place.
#[allow(clippy::too_many_arguments)]
pub fn forward_decode<D: KernelDispatcher>(
    d: &D,
    pool: &mut PoolOf<D>,
    layer: usize,
    batch: &DecodeBatch,
    weights: &LayerWeights<'_>,
    input: &LayerInput<'_>,
    params: DeltaParams,
    ws: &mut LayerWorkspace<D::Memory>,
    out: TensorMut<'_>,
) -> Result<()> {
    let _span = tracing::info_span!("forward_decode", backend = %d.capabilities().backend, layer, sequences = batch.num_seqs(), tokens = batch.tokens()).entered();
    let access = KernelAccess::Decode(batch);
    run_layer(
        d,
        pool,
        (layer, batch, access, access),
        batch.tokens(),
        weights,
        input,
        params,
        ws,
        out,
        |p, call| d.run_conv_update(p, call),
        |p, call| d.run_decode(p, call),
    )
}

/// Speculative verify of one layer, in the pool's [`SpecMode`](crate::SpecMode):
/// every draft's output; the main state and conv state untouched until [`commit`].
#[allow(clippy::too_many_arguments)]
pub fn forward_verify<D: KernelDispatcher>(
    d: &D,
    pool: &mut PoolOf<D>,
    layer: usize,
    batch: &VerifyBatch,
    weights: &LayerWeights<'_>,
    input: &LayerInput<'_>,
    params: DeltaParams,
    ws: &mut LayerWorkspace<D::Memory>,
    out: TensorMut<'_>,
) -> Result<()> {
    let _span = tracing::info_span!("forward_verify", backend = %d.capabilities().backend, layer, sequences = batch.num_seqs(), tokens = batch.tokens()).entered();
    run_layer(
        d,
        pool,
        (layer, batch, KernelAccess::ConvVerify(batch), KernelAccess::Verify(batch)),
        batch.tokens(),
        weights,
        input,
        params,
        ws,
        out,
        // the pool's speculative mode picks the kernels; nothing here asks which
        |p, call| crate::spec::conv_verify(d, p, call),
        |p, call| crate::spec::verify(d, p, call),
    )
}

/// Commit of one layer after [`forward_verify`]: the accepted step of each
/// request becomes its state, skipped requests (accepted `None`) keep theirs.
/// This is the engine's commit: the same call as [`KernelDispatcher::commit`],
/// named here beside the forwards it follows. (`StatePool::commit_accepted`
/// is the backend-less low-level copy for tools and tests.)
pub fn commit<D: KernelDispatcher>(d: &D, pool: &mut PoolOf<D>, layer: usize, batch: &CommitBatch) -> Result<()> {
    d.commit(pool, layer, batch)
}
