//! `deltanet replay`: run the inputs of a safetensors file through a backend
//! and the f64 oracle, and localise any disagreement per sequence, head and
//! 64-token chunk. The schema is in the README ("Replay files").

use deltanet::backend::{Backend, BackendVisitor};
use deltanet_core::oracle::{self, error_ratio};
use deltanet_core::{
    forward_extend, DType, DeltaIo, DeltaParams, DeviceTensor, Error, ExtendBatch, HeadMapping, HostState, KernelDispatcher, LayerInput,
    LayerWeights, LayerWorkspace, MambaStatePool, ModelDims, PoolConfig, Result,
};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

/// A tensor read from a replay file: its dtype, shape and values widened to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Stored dtype.
    pub dtype: DType,
    /// Dims.
    pub shape: Vec<usize>,
    /// Values (exact for f32/bf16/f16).
    pub data: Vec<f32>,
}

/// Layer-level inputs (conv → gate → delta rule).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerLevel {
    /// `[T, conv_dim]`.
    pub mixed_qkv: HostTensor,
    /// `[T, HV]`.
    pub a: HostTensor,
    /// `[T, HV]`.
    pub b: HostTensor,
    /// `[HV]`.
    pub a_log: Vec<f32>,
    /// `[HV]`.
    pub dt_bias: Vec<f32>,
    /// `[conv_dim, W]`.
    pub conv_weight: Vec<f32>,
    /// `[conv_dim]`.
    pub conv_bias: Option<Vec<f32>>,
    /// `[N, conv_dim, W-1]`.
    pub conv_state: Option<Vec<f32>>,
}

/// Delta-rule-level inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaLevel {
    /// `[T, HK, K]`.
    pub q: HostTensor,
    /// `[T, HK, K]`.
    pub k: HostTensor,
    /// `[T, HV, V]`.
    pub v: HostTensor,
    /// `[T, HV]`, f32.
    pub g: HostTensor,
    /// `[T, HV]`.
    pub beta: HostTensor,
}

/// What a replay file asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayInputs {
    /// q, k, v, g, beta given.
    Delta(DeltaLevel),
    /// mixed_qkv, a, b and the layer weights given.
    Layer(LayerLevel),
}

/// A parsed, validated replay file.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayFile {
    /// Dims (W = 4 unless conv_weight says otherwise).
    pub dims: ModelDims,
    /// Scale and L2 norm.
    pub params: DeltaParams,
    /// N+1 offsets.
    pub cu_seqlens: Vec<usize>,
    /// The inputs.
    pub inputs: ReplayInputs,
    /// `[N, HV, K, V]`, canonical.
    pub initial_state: Option<Vec<f32>>,
    /// Offsets within each sequence where the extend is split into separate calls.
    pub chunk_splits: Vec<usize>,
    /// `expected_o`, when the file carries reference outputs.
    pub expected_o: Option<Vec<f32>>,
    /// `expected_final_state`, when present.
    pub expected_final_state: Option<Vec<f32>>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidConfig(format!("replay file: {}", msg.into()))
}

fn tensor(st: &SafeTensors<'_>, name: &str) -> Result<Option<HostTensor>> {
    let t = match st.tensor(name) {
        Ok(t) => t,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => return Err(bad(format!("tensor `{name}`: {e}"))),
    };
    let dtype = match t.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        other => return Err(bad(format!("tensor `{name}` has dtype {other:?}; expected f32, bf16 or f16"))),
    };
    Ok(Some(HostTensor { dtype, shape: t.shape().to_vec(), data: dtype.decode_vec(t.data()) }))
}

fn required(st: &SafeTensors<'_>, name: &str) -> Result<HostTensor> {
    tensor(st, name)?.ok_or_else(|| bad(format!("missing required tensor `{name}`")))
}

fn expect_shape(name: &str, t: &HostTensor, shape: &[usize]) -> Result<()> {
    if t.shape != shape {
        return Err(bad(format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape)));
    }
    Ok(())
}

fn expect_f32(name: &str, t: &HostTensor) -> Result<()> {
    if t.dtype != DType::F32 {
        return Err(bad(format!("tensor `{name}` must be f32, is {}", t.dtype)));
    }
    Ok(())
}

fn rank(name: &str, t: &HostTensor, r: usize) -> Result<()> {
    if t.shape.len() != r {
        return Err(bad(format!("tensor `{name}` has rank {} ({:?}), expected {r}", t.shape.len(), t.shape)));
    }
    Ok(())
}

fn cu_seqlens(st: &SafeTensors<'_>) -> Result<Vec<usize>> {
    let t = st.tensor("cu_seqlens").map_err(|_| bad("missing required tensor `cu_seqlens`"))?;
    if t.dtype() != Dtype::I64 || t.shape().len() != 1 {
        return Err(bad(format!("tensor `cu_seqlens` must be a 1-D i64 tensor, is {:?} {:?}", t.dtype(), t.shape())));
    }
    let vals: Vec<i64> = t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    let cu: Vec<usize> =
        vals.iter().map(|&v| usize::try_from(v).map_err(|_| bad(format!("cu_seqlens has negative value {v}")))).collect::<Result<_>>()?;
    deltanet_core::batch::validate_cu_seqlens(&cu)?;
    Ok(cu)
}

impl ReplayFile {
    /// Parses and validates a replay file's bytes. Never panics on malformed input.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("header: {e}")))?;
        let md: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        let cu = cu_seqlens(&st)?;
        let (n, t) = (cu.len() - 1, *cu.last().expect("validated"));
        let initial = tensor(&st, "initial_state")?;
        let level_layer = st.names().iter().any(|n| *n == "mixed_qkv");
        let (dims, inputs) = if level_layer {
            let mixed = required(&st, "mixed_qkv")?;
            rank("mixed_qkv", &mixed, 2)?;
            let a_log = required(&st, "A_log")?;
            rank("A_log", &a_log, 1)?;
            let hv = a_log.shape[0];
            let cw = required(&st, "conv_weight")?;
            rank("conv_weight", &cw, 2)?;
            let (conv_dim, width) = (cw.shape[0], cw.shape[1]);
            let (kd, vd) = match &initial {
                Some(s) if s.shape.len() == 4 => (s.shape[2], s.shape[3]),
                _ => (meta_usize(&md, "head_k_dim")?, meta_usize(&md, "head_v_dim")?),
            };
            // Checked: K and V may come from metadata, any integer at all.
            let not_conv = || bad(format!("conv_dim {conv_dim} is not 2*HK*K + HV*V for HV {hv}, K {kd}, V {vd}"));
            let (two_k, hvv) = (kd.checked_mul(2).ok_or_else(not_conv)?, hv.checked_mul(vd).ok_or_else(not_conv)?);
            if two_k == 0 || conv_dim <= hvv || (conv_dim - hvv) % two_k != 0 {
                return Err(not_conv());
            }
            let hk = (conv_dim - hvv) / two_k;
            let dims = ModelDims::new(hk, hv, kd, vd, width)?;
            expect_shape("mixed_qkv", &mixed, &[t, conv_dim])?;
            let a = required(&st, "a")?;
            expect_shape("a", &a, &[t, hv])?;
            let b = required(&st, "b")?;
            expect_shape("b", &b, &[t, hv])?;
            let dt = required(&st, "dt_bias")?;
            expect_shape("dt_bias", &dt, &[hv])?;
            for (nm, x) in [("A_log", &a_log), ("dt_bias", &dt), ("conv_weight", &cw)] {
                expect_f32(nm, x)?;
            }
            let bias = tensor(&st, "conv_bias")?;
            if let Some(bb) = &bias {
                expect_shape("conv_bias", bb, &[conv_dim])?;
            }
            let cs = tensor(&st, "conv_state")?;
            if let Some(c) = &cs {
                expect_shape("conv_state", c, &[n, conv_dim, width - 1])?;
            }
            let lvl = LayerLevel {
                mixed_qkv: mixed,
                a,
                b,
                a_log: a_log.data,
                dt_bias: dt.data,
                conv_weight: cw.data,
                conv_bias: bias.map(|x| x.data),
                conv_state: cs.map(|x| x.data),
            };
            (dims, ReplayInputs::Layer(lvl))
        } else {
            let q = required(&st, "q")?;
            rank("q", &q, 3)?;
            let v = required(&st, "v")?;
            rank("v", &v, 3)?;
            let dims = ModelDims::new(q.shape[1], v.shape[1], q.shape[2], v.shape[2], 4)?;
            let (hk, hv, kd, vd) = (q.shape[1], v.shape[1], q.shape[2], v.shape[2]);
            expect_shape("q", &q, &[t, hk, kd])?;
            let k = required(&st, "k")?;
            expect_shape("k", &k, &[t, hk, kd])?;
            expect_shape("v", &v, &[t, hv, vd])?;
            let g = required(&st, "g")?;
            expect_shape("g", &g, &[t, hv])?;
            expect_f32("g", &g)?;
            let beta = required(&st, "beta")?;
            expect_shape("beta", &beta, &[t, hv])?;
            (dims, ReplayInputs::Delta(DeltaLevel { q, k, v, g, beta }))
        };
        let mapping = match md.get("head_mapping").map(String::as_str) {
            None => HeadMapping::Grouped,
            Some(s) => HeadMapping::parse(s).ok_or_else(|| bad(format!("metadata head_mapping `{s}` (grouped or tiled)")))?,
        };
        let dims = dims.with_head_mapping(mapping);
        let mut params = DeltaParams::new(&dims);
        if let Some(s) = md.get("scale") {
            params.scale = s.parse().map_err(|_| bad(format!("metadata scale `{s}` is not a number")))?;
        }
        if let Some(s) = md.get("use_qk_l2norm") {
            params.use_qk_l2norm = match s.as_str() {
                "true" | "True" | "1" => true,
                "false" | "False" | "0" => false,
                _ => return Err(bad(format!("metadata use_qk_l2norm `{s}` (true or false)"))),
            };
        }
        let initial_state = match initial {
            Some(s) => {
                expect_shape("initial_state", &s, &[n, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim])?;
                expect_f32("initial_state", &s)?;
                Some(s.data)
            }
            None => None,
        };
        let mut chunk_splits: Vec<usize> = match md.get("chunk_splits") {
            None => Vec::new(),
            Some(s) if s.trim().is_empty() => Vec::new(),
            Some(s) => s
                .split(',')
                .map(|x| x.trim().parse::<usize>().map_err(|_| bad(format!("metadata chunk_splits `{s}`"))))
                .collect::<Result<_>>()?,
        };
        chunk_splits.sort_unstable();
        chunk_splits.dedup();
        chunk_splits.retain(|&x| x > 0);
        check_memory(bytes.len(), n, &dims)?;
        let (hv, kd, vd) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let expected = |name: &str, shape: &[usize]| -> Result<Option<Vec<f32>>> {
            let Some(x) = tensor(&st, name)? else { return Ok(None) };
            expect_shape(name, &x, shape)?;
            Ok(Some(x.data))
        };
        let exp_o = expected("expected_o", &[t, hv, vd])?;
        let exp_s = expected("expected_final_state", &[n, hv, kd, vd])?;
        Ok(ReplayFile { dims, params, cu_seqlens: cu, inputs, initial_state, chunk_splits, expected_o: exp_o, expected_final_state: exp_s })
    }

    /// Packed tokens T.
    pub fn tokens(&self) -> usize {
        *self.cu_seqlens.last().expect("validated")
    }
}

/// Bytes a replay may use beyond what the file itself holds: a fixed floor
/// plus a multiple of the file's size.
const MEMORY_FLOOR: usize = 256 << 20;
const MEMORY_PER_FILE_BYTE: usize = 16;

/// Refuses a file whose states (the pool's, the oracle's in f64, the
/// exported copies: about 24 bytes per state element) would need more memory
/// than the budget its own size allows. Inputs and outputs are in proportion
/// to the file already; states are not (K and V may be declared in metadata,
/// or a 1-token file may carry K = V = 2^15).
fn check_memory(file_bytes: usize, n: usize, dims: &ModelDims) -> Result<()> {
    let per_seq = dims.state_elems().checked_add(dims.conv_elems());
    let needed = per_seq.and_then(|e| e.checked_mul(n)).and_then(|e| e.checked_mul(24));
    let budget = file_bytes.saturating_mul(MEMORY_PER_FILE_BYTE).saturating_add(MEMORY_FLOOR);
    match needed {
        Some(b) if b <= budget => Ok(()),
        _ => Err(bad(format!(
            "{n} sequences of HV {} x K {} x V {} state need {} bytes, more than the {budget} bytes a {file_bytes}-byte file may use",
            dims.num_v_heads,
            dims.head_k_dim,
            dims.head_v_dim,
            needed.map_or("over 2^64".to_string(), |b| b.to_string())
        ))),
    }
}

fn meta_usize(md: &HashMap<String, String>, key: &str) -> Result<usize> {
    md.get(key)
        .ok_or_else(|| bad(format!("layer-level file without initial_state needs metadata `{key}`")))?
        .parse()
        .map_err(|_| bad(format!("metadata `{key}` is not an integer")))
}

/// What a backend and the oracle produced for a replay file.
#[derive(Debug, Clone)]
pub struct ReplayOutputs {
    /// Backend output `[T, HV, V]`.
    pub o: Vec<f32>,
    /// Backend final state `[N, HV, K, V]`.
    pub final_state: Vec<f32>,
    /// Backend conv state `[N, conv_dim, W-1]` (layer-level files).
    pub conv_state_out: Option<Vec<f32>>,
    /// Oracle output.
    pub oracle_o: Vec<f64>,
    /// Oracle final state.
    pub oracle_state: Vec<f64>,
    /// Oracle conv state (layer-level).
    pub oracle_conv_state: Option<Vec<f64>>,
}

/// Runs the file on `backend` (with its chunk splits) and on the oracle.
pub fn run(backend: &Backend, file: &ReplayFile) -> Result<ReplayOutputs> {
    let (o, final_state, conv_state_out) = backend.visit(ReplayVisit(file))?;
    let (oracle_o, oracle_state, oracle_conv_state) = oracle_run(file);
    Ok(ReplayOutputs { o, final_state, conv_state_out, oracle_o, oracle_state, oracle_conv_state })
}

/// The oracle's outputs for a file: (o, final state, conv state).
pub fn oracle_run(f: &ReplayFile) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let d = &f.dims;
    match &f.inputs {
        ReplayInputs::Delta(x) => {
            let out = oracle::gated_delta_rule(
                d,
                &f.params,
                &x.q.data,
                &x.k.data,
                &x.v.data,
                &x.g.data,
                &x.beta.data,
                &f.cu_seqlens,
                f.initial_state.as_deref(),
            );
            (out.o, out.final_state, None)
        }
        ReplayInputs::Layer(x) => {
            let t = f.tokens();
            let c = d.conv_dim();
            let conv = oracle::causal_conv1d(
                &x.mixed_qkv.data,
                &x.conv_weight,
                x.conv_bias.as_deref(),
                c,
                d.conv_width,
                &f.cu_seqlens,
                x.conv_state.as_deref(),
            );
            let (g, beta) = oracle::gate(&x.a.data, &x.b.data, &x.a_log, &x.dt_bias);
            let hkk = d.num_k_heads * d.head_k_dim;
            let split = |lo: usize, hi: usize| -> Vec<f32> {
                (0..t).flat_map(|i| conv.out[i * c + lo..i * c + hi].iter().map(|&v| v as f32)).collect()
            };
            let (q, k, v) = (split(0, hkk), split(hkk, 2 * hkk), split(2 * hkk, c));
            let g: Vec<f32> = g.iter().map(|&v| v as f32).collect();
            let beta: Vec<f32> = beta.iter().map(|&v| v as f32).collect();
            let out = oracle::gated_delta_rule(d, &f.params, &q, &k, &v, &g, &beta, &f.cu_seqlens, f.initial_state.as_deref());
            (out.o, out.final_state, Some(conv.conv_state))
        }
    }
}

struct ReplayVisit<'a>(&'a ReplayFile);

type BackendOut = (Vec<f32>, Vec<f32>, Option<Vec<f32>>);

impl BackendVisitor for ReplayVisit<'_> {
    type Output = Result<BackendOut>;
    fn visit<D: KernelDispatcher>(self, d: &D) -> Result<BackendOut> {
        let f = self.0;
        let dims = f.dims;
        let n = f.cu_seqlens.len() - 1;
        let (hv, vd) = (dims.num_v_heads, dims.head_v_dim);
        let mem = d.memory();
        let mut pool = d.new_pool(PoolConfig::new(1, n, dims))?;
        let slots = pool.alloc(n)?;
        let conv_init = match &f.inputs {
            ReplayInputs::Layer(x) => x.conv_state.clone(),
            ReplayInputs::Delta(_) => None,
        };
        for (i, &s) in slots.iter().enumerate() {
            let st = f
                .initial_state
                .as_ref()
                .map_or(vec![0.0; dims.state_elems()], |v| v[i * dims.state_elems()..(i + 1) * dims.state_elems()].to_vec());
            let cs =
                conv_init.as_ref().map_or(vec![0.0; dims.conv_elems()], |v| v[i * dims.conv_elems()..(i + 1) * dims.conv_elems()].to_vec());
            pool.import(s, &HostState::from_f32(1, dims, DType::F32, DType::F32, &st, &cs)?)?;
        }
        let has_init = f.initial_state.is_some() || conv_init.is_some();
        let mut o_all = vec![0.0f32; f.tokens() * hv * vd];
        let mut ws = LayerWorkspace::new(mem.clone());
        // segment boundaries (within each sequence): 0, splits..., len
        let mut bounds = vec![0];
        bounds.extend(f.chunk_splits.iter().copied());
        bounds.push(usize::MAX);
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let (mut cu, mut seg_slots, mut init, mut rows) = (vec![0], vec![], vec![], vec![]);
            for (i, &slot) in slots.iter().enumerate() {
                let len = f.cu_seqlens[i + 1] - f.cu_seqlens[i];
                if lo >= len {
                    continue;
                }
                let hi = hi.min(len);
                rows.extend((f.cu_seqlens[i] + lo)..(f.cu_seqlens[i] + hi));
                cu.push(rows.len());
                seg_slots.push(slot);
                init.push(has_init || lo > 0);
            }
            if rows.is_empty() {
                continue;
            }
            let t = rows.len();
            let batch = ExtendBatch::new(&pool, &cu, &seg_slots, &init)?;
            let gather = |x: &HostTensor| -> Result<DeviceTensor<D::Memory>> {
                let w: usize = x.shape[1..].iter().product();
                let data: Vec<f32> = rows.iter().flat_map(|&r| x.data[r * w..(r + 1) * w].iter().copied()).collect();
                let mut shape = x.shape.clone();
                shape[0] = t;
                DeviceTensor::from_f32(mem, x.dtype, &shape, &data)
            };
            let mut out = DeviceTensor::zeros(mem, DType::F32, &[t, hv, vd])?;
            match &f.inputs {
                ReplayInputs::Delta(x) => {
                    let (q, k, v, g, beta) = (gather(&x.q)?, gather(&x.k)?, gather(&x.v)?, gather(&x.g)?, gather(&x.beta)?);
                    let io = DeltaIo {
                        q: q.view(),
                        k: k.view(),
                        v: v.view(),
                        g: g.view(),
                        beta: beta.view(),
                        o: out.view_mut(),
                        params: f.params,
                    };
                    d.extend(&mut pool, 0, &batch, io)?;
                }
                ReplayInputs::Layer(x) => {
                    let (mixed, a, b) = (gather(&x.mixed_qkv)?, gather(&x.a)?, gather(&x.b)?);
                    let a_log = DeviceTensor::from_f32(mem, DType::F32, &[hv], &x.a_log)?;
                    let dt = DeviceTensor::from_f32(mem, DType::F32, &[hv], &x.dt_bias)?;
                    let cw = DeviceTensor::from_f32(mem, DType::F32, &[dims.conv_dim(), dims.conv_width], &x.conv_weight)?;
                    let cb = x.conv_bias.as_ref().map(|b| DeviceTensor::from_f32(mem, DType::F32, &[dims.conv_dim()], b)).transpose()?;
                    let w = LayerWeights {
                        a_log: a_log.view(),
                        dt_bias: dt.view(),
                        conv_weight: cw.view(),
                        conv_bias: cb.as_ref().map(|b| b.view()),
                    };
                    let input = LayerInput { mixed_qkv: mixed.view(), a: a.view(), b: b.view() };
                    forward_extend(d, &mut pool, 0, &batch, &w, &input, f.params, &mut ws, out.view_mut())?;
                }
            }
            let o = out.to_f32()?;
            for (j, &r) in rows.iter().enumerate() {
                o_all[r * hv * vd..(r + 1) * hv * vd].copy_from_slice(&o[j * hv * vd..(j + 1) * hv * vd]);
            }
        }
        let (mut fin, mut conv) = (Vec::new(), Vec::new());
        for &s in &slots {
            let st = pool.export(s)?;
            fin.extend(st.temporal_f32());
            conv.extend(st.conv_f32());
        }
        let conv = matches!(f.inputs, ReplayInputs::Layer(_)).then_some(conv);
        Ok((o_all, fin, conv))
    }
}

/// Per-sequence, per-head and per-chunk error ratios, and where the error jumps.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Whole-output ratio.
    pub o_ratio: f64,
    /// Whole final-state ratio.
    pub state_ratio: f64,
    /// Conv-state ratio (layer-level files).
    pub conv_ratio: Option<f64>,
    /// Per sequence: (o ratio, state ratio).
    pub per_seq: Vec<(f64, f64)>,
    /// Per value head: o ratio.
    pub per_head: Vec<f64>,
    /// Per sequence, per 64-token chunk: o ratio.
    pub per_chunk: Vec<Vec<f64>>,
    /// Per sequence, per token: rms error of the token's output over the rms of the sequence's reference output.
    pub per_token: Vec<Vec<f64>>,
    /// First (sequence, token within it) where the per-token error jumps.
    pub first_jump: Option<(usize, usize)>,
    /// Ratio against the file's own `expected_o` / `expected_final_state`, when present.
    pub vs_expected: Option<(f64, f64)>,
}

/// Compares backend outputs with the oracle.
pub fn report(f: &ReplayFile, out: &ReplayOutputs) -> ReplayReport {
    let d = &f.dims;
    let (hv, vd, per_state) = (d.num_v_heads, d.head_v_dim, d.state_elems());
    let n = f.cu_seqlens.len() - 1;
    let row = hv * vd;
    let mut per_seq = Vec::new();
    let mut per_chunk = Vec::new();
    let mut per_token = Vec::new();
    let mut first_jump = None;
    for i in 0..n {
        let (a, b) = (f.cu_seqlens[i] * row, f.cu_seqlens[i + 1] * row);
        let so = error_ratio(&out.o[a..b], &out.oracle_o[a..b]);
        let ss = error_ratio(&out.final_state[i * per_state..(i + 1) * per_state], &out.oracle_state[i * per_state..(i + 1) * per_state]);
        per_seq.push((so, ss));
        let len = f.cu_seqlens[i + 1] - f.cu_seqlens[i];
        per_chunk.push(
            (0..len.div_ceil(64))
                .map(|c| {
                    let (lo, hi) = (a + c * 64 * row, (a + ((c + 1) * 64).min(len) * row));
                    error_ratio(&out.o[lo..hi], &out.oracle_o[lo..hi])
                })
                .collect(),
        );
        // per-token error relative to the sequence's reference scale
        let scale = (out.oracle_o[a..b].iter().map(|x| x * x).sum::<f64>() / (b - a) as f64).sqrt().max(1e-30);
        let mut errs: Vec<f64> = Vec::new();
        for t in 0..len {
            let (lo, hi) = (a + t * row, a + (t + 1) * row);
            let e = (out.o[lo..hi].iter().zip(&out.oracle_o[lo..hi]).map(|(x, y)| (*x as f64 - y).powi(2)).sum::<f64>() / row as f64)
                .sqrt()
                / scale;
            let mut sorted = errs.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
            if first_jump.is_none() && e > deltanet_core::tolerance::REFERENCE && e > 10.0 * median.max(1e-7) {
                first_jump = Some((i, t));
            }
            errs.push(e);
        }
        per_token.push(errs);
    }
    let per_head = (0..hv)
        .map(|h| {
            let (mut x, mut r) = (Vec::new(), Vec::new());
            for t in 0..f.tokens() {
                x.extend_from_slice(&out.o[t * row + h * vd..t * row + (h + 1) * vd]);
                r.extend_from_slice(&out.oracle_o[t * row + h * vd..t * row + (h + 1) * vd]);
            }
            error_ratio(&x, &r)
        })
        .collect();
    let to64 = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
    // Shapes were checked at parse time.
    let vs_expected = match (&f.expected_o, &f.expected_final_state) {
        (Some(eo), Some(es)) => Some((error_ratio(&out.o, &to64(eo)), error_ratio(&out.final_state, &to64(es)))),
        _ => None,
    };
    ReplayReport {
        o_ratio: error_ratio(&out.o, &out.oracle_o),
        state_ratio: error_ratio(&out.final_state, &out.oracle_state),
        conv_ratio: match (&out.conv_state_out, &out.oracle_conv_state) {
            (Some(a), Some(b)) => Some(error_ratio(a, b)),
            _ => None,
        },
        per_seq,
        per_head,
        per_chunk,
        per_token,
        first_jump,
        vs_expected,
    }
}

/// Writes `o`, `final_state` (and `conv_state_out`) as f32 safetensors.
pub fn write_outputs(path: &std::path::Path, f: &ReplayFile, out: &ReplayOutputs) -> Result<()> {
    let d = &f.dims;
    let n = f.cu_seqlens.len() - 1;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        ("o".into(), vec![f.tokens(), d.num_v_heads, d.head_v_dim], DType::F32.encode_vec(&out.o)),
        ("final_state".into(), vec![n, d.num_v_heads, d.head_k_dim, d.head_v_dim], DType::F32.encode_vec(&out.final_state)),
    ];
    if let Some(c) = &out.conv_state_out {
        tensors.push(("conv_state_out".into(), vec![n, d.conv_dim(), d.conv_state_len()], DType::F32.encode_vec(c)));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("building output: {e}")))?;
    safetensors::serialize_to_file(views, &None, path).map_err(|e| bad(format!("writing {}: {e}", path.display())))
}
