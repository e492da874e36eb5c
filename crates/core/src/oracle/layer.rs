//! The layer oracle: what [`forward_extend`](crate::forward_extend),
//! [`forward_decode`](crate::forward_decode) and [`forward_verify`](crate::forward_verify)
//! compute for one GDN layer — causal conv1d → SiLU → split into q, k, v →
//! gate → gated delta rule — in f64 throughout, from the same arguments.
//!
//! Call it *before* the forward it checks: it reads each slot's state in
//! `layer` from the pool (through [`MambaStatePool::export`]), which the
//! forward then overwrites. A commit of verify step `a` must leave the slot
//! holding `after[i * D + a]` of [`layer_verify`].
//!
//! ```
//! use deltanet_core::*;
//! let dims = ModelDims::builder().key_heads(1).value_heads(1).head_k_dim(2).head_v_dim(2).conv_width(2).build()?;
//! let caps = Capabilities::host_reference(LayoutKind::KMajor);
//! let config = PoolConfig::builder(dims).layers(1).slots(1).build()?;
//! let pool: StatePool<HostMemory, KMajor> = StatePool::new(HostMemory, config, &caps)?;
//! let slot = pool.alloc(1)?;
//! let batch = ExtendBatch::new(&pool, &[0, 1], &slot, &[false])?;
//! let (a_log, dt_bias, conv_weight) = ([0.0f32], [0.0f32], [0.5f32; 12]);
//! let (mixed_qkv, a, b) = ([1.0f32; 6], [0.0f32], [0.0f32]);
//! let weights = LayerWeights {
//!     a_log: TensorRef::from_slice(&a_log, &[1])?,
//!     dt_bias: TensorRef::from_slice(&dt_bias, &[1])?,
//!     conv_weight: TensorRef::from_slice(&conv_weight, &[6, 2])?,
//!     conv_bias: None,
//! };
//! let input = LayerInput {
//!     mixed_qkv: TensorRef::from_slice(&mixed_qkv, &[1, 6])?,
//!     a: TensorRef::from_slice(&a, &[1, 1])?,
//!     b: TensorRef::from_slice(&b, &[1, 1])?,
//! };
//! let r = oracle::layer_extend(&pool, 0, &batch, &weights, &input, DeltaParams::new(&dims))?;
//! assert_eq!(r.o.len(), 2); // [T, HV, V]
//! assert_eq!(r.after[0].conv, vec![1.0; 6]); // the last W-1 = 1 raw inputs
//! # Ok::<(), deltanet_core::Error>(())
//! ```

use crate::batch::{DecodeBatch, ExtendBatch, VerifyBatch};
use crate::dims::{DeltaParams, ModelDims};
use crate::dtype::DType;
use crate::error::Result;
use crate::forward::{LayerInput, LayerWeights};
use crate::pool::{HostState, MambaStatePool, Slot};
use crate::tensor::{Device, TensorMeta, TensorRef};

/// One request's state in one layer, in canonical order: conv `[conv_dim, W-1]`
/// (channels-first, oldest column first) and recurrent `[HV, K, V]` (K-major).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotState<T> {
    /// Conv state `[conv_dim, W-1]`.
    pub conv: Vec<T>,
    /// Recurrent state `[HV, K, V]`.
    pub state: Vec<T>,
}

impl SlotState<f32> {
    /// Layer `layer` of an exported slot state, as f32.
    pub fn of(host: &HostState, layer: usize) -> Self {
        let (s, c) = (host.dims.state_elems(), host.dims.conv_elems());
        SlotState {
            conv: host.conv_f32()[layer * c..(layer + 1) * c].to_vec(),
            state: host.temporal_f32()[layer * s..(layer + 1) * s].to_vec(),
        }
    }
}

impl SlotState<f64> {
    /// The worse of the conv and recurrent error ratios of `actual` against
    /// this reference ([`super::error_ratio`]).
    pub fn error_ratio(&self, actual: &SlotState<f32>) -> f64 {
        super::worst_ratio(super::error_ratio(&actual.conv, &self.conv), super::error_ratio(&actual.state, &self.state))
    }
}

/// What one layer step computes.
#[derive(Debug, Clone)]
pub struct LayerOracleOutput {
    /// Output `[T, HV, V]`, in the batch's token order.
    pub o: Vec<f64>,
    /// The state each slot of the batch holds afterwards, one per sequence
    /// (extend) or request (decode); for verify, one per draft step,
    /// request-major (`i * D + t`): what a commit of step `t` copies into the slot.
    pub after: Vec<SlotState<f64>>,
    /// Extend only: the state each snapshot slot receives, in the batch's snapshot order.
    pub snapshots: Vec<SlotState<f64>>,
}

/// Prefill / chunked prefill of one layer: what [`forward_extend`](crate::forward_extend)
/// computes from the same arguments. A sequence without `has_initial_state`
/// starts from zeros.
pub fn layer_extend<P: MambaStatePool + ?Sized>(
    pool: &P,
    layer: usize,
    batch: &ExtendBatch,
    weights: &LayerWeights<'_>,
    input: &LayerInput<'_>,
    params: DeltaParams,
) -> Result<LayerOracleOutput> {
    batch.check_pool(pool)?;
    let step = Step::read(pool, layer, batch.slots(), batch.tokens(), weights, input, params)?;
    let mut r = LayerOracleOutput { o: vec![0.0; step.o_len()], after: Vec::new(), snapshots: Vec::new() };
    let mut snapshots = vec![None; batch.snapshots().len()];
    for (i, start) in step.before.iter().enumerate() {
        let mut state = if batch.has_initial_state()[i] { start.clone() } else { step.zeros() };
        // Run the sequence in segments that end at each snapshot position, then at its end.
        let mut cuts: Vec<(usize, Option<usize>)> =
            batch.snapshots().iter().enumerate().filter(|(_, s)| s.seq == i).map(|(j, s)| (s.position, Some(j))).collect();
        cuts.sort_by_key(|c| c.0);
        cuts.push((batch.seq_len(i), None));
        let mut done = 0;
        for (position, snapshot) in cuts {
            let path: Vec<usize> = (batch.seq_range(i).start + done..batch.seq_range(i).start + position).collect();
            state = step.run(&path, &state, &mut r.o);
            done = position;
            if let Some(j) = snapshot {
                snapshots[j] = Some(state.clone());
            }
        }
        r.after.push(state);
    }
    r.snapshots = snapshots.into_iter().map(|s| s.expect("every snapshot names a sequence of the batch")).collect();
    Ok(r)
}

/// One decode step of one layer: what [`forward_decode`](crate::forward_decode) computes.
pub fn layer_decode<P: MambaStatePool + ?Sized>(
    pool: &P,
    layer: usize,
    batch: &DecodeBatch,
    weights: &LayerWeights<'_>,
    input: &LayerInput<'_>,
    params: DeltaParams,
) -> Result<LayerOracleOutput> {
    batch.check_pool(pool)?;
    let step = Step::read(pool, layer, batch.slots(), batch.tokens(), weights, input, params)?;
    let mut r = LayerOracleOutput { o: vec![0.0; step.o_len()], after: Vec::new(), snapshots: Vec::new() };
    for (i, start) in step.before.iter().enumerate() {
        r.after.push(step.run(&[i], start, &mut r.o));
    }
    Ok(r)
}

/// Speculative verify of one layer: what [`forward_verify`](crate::forward_verify)
/// computes. Step `t` of request `i` runs the path from the slot's state
/// through its ancestors to `t`; `after[i * D + t]` is the state after it.
pub fn layer_verify<P: MambaStatePool + ?Sized>(
    pool: &P,
    layer: usize,
    batch: &VerifyBatch,
    weights: &LayerWeights<'_>,
    input: &LayerInput<'_>,
    params: DeltaParams,
) -> Result<LayerOracleOutput> {
    batch.check_pool(pool)?;
    let step = Step::read(pool, layer, batch.slots(), batch.tokens(), weights, input, params)?;
    let d = batch.draft();
    let mut r = LayerOracleOutput { o: vec![0.0; step.o_len()], after: Vec::new(), snapshots: Vec::new() };
    let mut path_o = vec![0.0; step.o_len()];
    for (i, start) in step.before.iter().enumerate() {
        for t in 0..d {
            let mut path = vec![i * d + t];
            while let Some(p) = batch.parent(i, path[0] - i * d) {
                path.insert(0, i * d + p);
            }
            r.after.push(step.run(&path, start, &mut path_o));
            // Only the step's own row: its ancestors' rows come from their own paths.
            let row = step.dims.num_v_heads * step.dims.head_v_dim;
            r.o[(i * d + t) * row..(i * d + t + 1) * row].copy_from_slice(&path_o[(i * d + t) * row..(i * d + t + 1) * row]);
        }
    }
    Ok(r)
}

/// One layer step's inputs, read from the host tensors into f64, and the
/// slots' states before it.
struct Step {
    dims: ModelDims,
    params: DeltaParams,
    a_log: Vec<f64>,
    dt_bias: Vec<f64>,
    conv_weight: Vec<f64>,
    conv_bias: Option<Vec<f64>>,
    /// `[T, conv_dim]`.
    mixed_qkv: Vec<f64>,
    /// `[T, HV]`.
    a: Vec<f64>,
    /// `[T, HV]`.
    b: Vec<f64>,
    before: Vec<SlotState<f64>>,
}

impl Step {
    /// Checks every tensor as the layer forward does (shapes, host device;
    /// weights f32, inputs f32/bf16/f16) and reads `slots`' state in `layer`.
    fn read<P: MambaStatePool + ?Sized>(
        pool: &P,
        layer: usize,
        slots: &[Slot],
        tokens: usize,
        w: &LayerWeights<'_>,
        x: &LayerInput<'_>,
        params: DeltaParams,
    ) -> Result<Self> {
        let dims = pool.geometry().config.dims;
        pool.geometry().check_layer(layer)?;
        let (hv, c) = (dims.num_v_heads, dims.conv_dim());
        let f32s = &[DType::F32][..];
        let inputs = &[DType::F32, DType::BF16, DType::F16][..];
        let before = slots
            .iter()
            .map(|&s| {
                let st = SlotState::of(&pool.export(s)?, layer);
                let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect();
                Ok(SlotState { conv: f64s(&st.conv), state: f64s(&st.state) })
            })
            .collect::<Result<_>>()?;
        Ok(Step {
            dims,
            params,
            a_log: read("A_log", &w.a_log, f32s, &[hv])?,
            dt_bias: read("dt_bias", &w.dt_bias, f32s, &[hv])?,
            conv_weight: read("conv_weight", &w.conv_weight, f32s, &[c, dims.conv_width])?,
            conv_bias: w.conv_bias.as_ref().map(|b| read("conv_bias", b, f32s, &[c])).transpose()?,
            mixed_qkv: read("mixed_qkv", &x.mixed_qkv, inputs, &[tokens, c])?,
            a: read("a", &x.a, inputs, &[tokens, hv])?,
            b: read("b", &x.b, inputs, &[tokens, hv])?,
            before,
        })
    }

    fn o_len(&self) -> usize {
        self.mixed_qkv.len() / self.dims.conv_dim() * self.dims.num_v_heads * self.dims.head_v_dim
    }

    fn zeros(&self) -> SlotState<f64> {
        SlotState { conv: vec![0.0; self.dims.conv_elems()], state: vec![0.0; self.dims.state_elems()] }
    }

    /// Runs the tokens `path` (batch token indices, in order) as one sequence
    /// from `start`: writes their rows of `o` and returns the state after the last.
    fn run(&self, path: &[usize], start: &SlotState<f64>, o: &mut [f64]) -> SlotState<f64> {
        if path.is_empty() {
            return start.clone();
        }
        let d = &self.dims;
        let (hk, hv, k, v, c) = (d.num_k_heads, d.num_v_heads, d.head_k_dim, d.head_v_dim, d.conv_dim());
        let rows = |x: &[f64], per: usize| path.iter().flat_map(|&t| x[t * per..(t + 1) * per].iter().copied()).collect::<Vec<f64>>();
        let (x, a, b) = (rows(&self.mixed_qkv, c), rows(&self.a, hv), rows(&self.b, hv));
        let cu = [0, path.len()];
        let conv = super::causal_conv1d_of(&x, &self.conv_weight, self.conv_bias.as_deref(), c, d.conv_width, &cu, Some(&start.conv));
        // The conv output row is [q | k | v]: HK*K, HK*K, HV*V channels.
        let split = |lo: usize, hi: usize| conv.out.chunks_exact(c).flat_map(|row| row[lo..hi].iter().copied()).collect::<Vec<f64>>();
        let (q, kk, vv) = (split(0, hk * k), split(hk * k, 2 * hk * k), split(2 * hk * k, c));
        let (g, beta) = super::gate_of(&a, &b, &self.a_log, &self.dt_bias);
        let out = super::delta_rule_of(d, &self.params, &q, &kk, &vv, &g, &beta, &cu, Some(&start.state));
        for (j, &t) in path.iter().enumerate() {
            o[t * hv * v..(t + 1) * hv * v].copy_from_slice(&out.o[j * hv * v..(j + 1) * hv * v]);
        }
        SlotState { conv: conv.conv_state, state: out.final_state }
    }
}

/// A host tensor's elements in row-major order of its shape, as f64, after
/// the checks the layer forward runs on it.
fn read(name: &str, t: &TensorRef<'_>, dtypes: &[DType], shape: &[usize]) -> Result<Vec<f64>> {
    t.meta().expect(name, Device::Host, dtypes, shape)?;
    Ok(match t.meta().dtype() {
        DType::F32 => gather(t.host_slice::<f32>()?, t.meta(), |x| x as f64),
        DType::BF16 => gather(t.host_slice::<half::bf16>()?, t.meta(), |x| x.to_f64()),
        _ => gather(t.host_slice::<half::f16>()?, t.meta(), |x| x.to_f64()),
    })
}

fn gather<T: Copy>(data: &[T], meta: &TensorMeta, f: impl Fn(T) -> f64) -> Vec<f64> {
    let shape = meta.shape();
    let mut idx = vec![0; shape.len()];
    let mut out = Vec::with_capacity(meta.numel());
    for _ in 0..meta.numel() {
        out.push(f(data[meta.offset(&idx)]));
        // Next multi-index, innermost dimension fastest.
        for (i, n) in idx.iter_mut().zip(shape).rev() {
            *i += 1;
            if *i < *n {
                break;
            }
            *i = 0;
        }
    }
    out
}
