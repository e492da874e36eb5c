//! The native halves of `deltanet.functional`: the fla-style delta rule and
//! the causal-conv1d-style conv on caller tensors. Each call runs on a pool
//! of its own, with the GIL released. The delta rule's final states are that
//! pool, handed out as a view ([`crate::states`]), and a view passed back as
//! `initial_state` with `inplace` is advanced in place, and so, at a decode
//! step, is a caller's own contiguous f32 state (`decode_caller_state`: the
//! kernel runs on it where it lies, no pool); any other initial state is
//! staged in (one copy). A decode step's conv runs on the caller's
//! contiguous f32 conv state where it lies (`conv_update_caller_state`); other
//! conv states are staged in and out (they are small). Inputs and outputs
//! themselves are never copied.

use crate::errors::{guard, raise, IntoPy};
use crate::staging::{self, Part};
use crate::states::{self, OwnedStates, StateView};
use crate::tensor::{borrow, borrow_opt, Borrowed};
use deltanet::{
    Backend, ConvIo, DecodeBatch, DeltaIo, DeltaParams, ExtendBatch, GateIo, LayoutKind, ModelDims, Pool, Slot, TensorMut, TensorRef,
};
use pyo3::prelude::*;
use std::sync::{Mutex, OnceLock};

/// A decode (and a decode step's conv) of at most this many state bytes runs on the calling
/// thread (`CpuDispatcher::with_inline_decode`): next to torch's spinning OpenMP workers a
/// second worker is preempted mid-task and the caller waits for it. 8 MiB is a batch of 8
/// requests of a Qwen3.5-0.8B layer (f32): inside transformers, on a 2-core AVX2 VM, the
/// calling thread alone cut the mean batch-8 recurrent call from 0.90-1.30 ms to 0.78-0.84 ms
/// and the conv update's from 0.48-0.64 ms to 0.26-0.29 ms (medians unchanged: the gain is
/// the stalls); on a 2-core Zen 5 VM batch 8 ran the same either way.
const INLINE_DECODE_BYTES: usize = 8 << 20;

/// The process-wide CPU backends (K-major for fla's default state, V-major for `state_v_first`):
/// once an OpenMP runtime is loaded (torch imported), the ones that run their calls on its team
/// (`omp_team.rs`); until then, the ones that use the calling thread and rayon's pool.
pub fn cpu_backend(vmajor: bool) -> PyResult<&'static Backend> {
    static K: OnceLock<Backend> = OnceLock::new();
    static V: OnceLock<Backend> = OnceLock::new();
    static K_TEAM: OnceLock<Backend> = OnceLock::new();
    static V_TEAM: OnceLock<Backend> = OnceLock::new();
    let team = crate::omp_team::OmpTeam::loaded();
    let cell = match (vmajor, team.is_some()) {
        (false, false) => &K,
        (true, false) => &V,
        (false, true) => &K_TEAM,
        (true, true) => &V_TEAM,
    };
    Ok(cell.get_or_init(|| {
        if vmajor {
            Backend::CpuVMajor(with_team(deltanet::cpu::CpuVMajor::new().with_inline_decode(INLINE_DECODE_BYTES), team))
        } else {
            Backend::CpuKMajor(with_team(deltanet::cpu::CpuKMajor::new().with_inline_decode(INLINE_DECODE_BYTES), team))
        }
    }))
}

fn with_team<L: deltanet::StateLayout>(
    d: deltanet::cpu::CpuDispatcher<L>,
    team: Option<crate::omp_team::OmpTeam>,
) -> deltanet::cpu::CpuDispatcher<L> {
    match team {
        Some(t) => d.with_host_team(t.shared()),
        None => d,
    }
}

fn expect_shape(t: &Borrowed<'_>, want: &[usize], what: &str) -> PyResult<()> {
    if t.shape() != want {
        return Err(raise("ShapeError", format!("tensor `{}`: expected shape {want:?} ({what}), got {:?}", t.name, t.shape())));
    }
    Ok(())
}

/// How the `[B, T, ...]` tensors of a call are cut into kernel calls: one
/// packed call when every tensor's batch stride is `T` times its token stride
/// (always true for contiguous tensors) or `T = 1` (a decode step: the batch
/// stride is the row stride), else one call per batch row.
struct Groups {
    packed: bool,
    b: usize,
    t: usize,
}

impl Groups {
    fn new(b: usize, t: usize, tensors: &[&Borrowed<'_>]) -> Self {
        let packed = b == 1 || t == 1 || tensors.iter().all(|x| x.strides()[0] == t * x.strides()[1]);
        Groups { packed, b, t }
    }
    /// (element offset multiplier per tensor is its batch stride) group index -> batch rows.
    fn rows(&self) -> Vec<std::ops::Range<usize>> {
        if self.packed {
            std::iter::once(0..self.b).collect()
        } else {
            (0..self.b).map(|i| i..i + 1).collect()
        }
    }
    /// A `[rows*T, rest...]` view of `x` (shape `[B, T, rest...]`) for batch rows `r`.
    fn view<'a>(&self, x: &'a Borrowed<'_>, r: &std::ops::Range<usize>) -> PyResult<TensorRef<'a>> {
        let (shape, strides) = self.packed_dims(x, r);
        x.sub(r.start * x.strides()[0], &shape, &strides)
    }
    fn view_mut<'a>(&self, x: &'a Borrowed<'_>, r: &std::ops::Range<usize>) -> PyResult<TensorMut<'a>> {
        let (shape, strides) = self.packed_dims(x, r);
        x.sub_mut(r.start * x.strides()[0], &shape, &strides)
    }
    fn packed_dims(&self, x: &Borrowed<'_>, r: &std::ops::Range<usize>) -> (Vec<usize>, Vec<usize>) {
        let mut shape = vec![r.len() * self.t];
        shape.extend_from_slice(&x.shape()[2..]);
        // Rows of the packed view are tokens; with one token per sequence they are sequences.
        let mut strides = vec![if self.t == 1 { x.strides()[0] } else { x.strides()[1] }];
        strides.extend_from_slice(&x.strides()[2..]);
        (shape, strides)
    }
}

/// Reads a state tensor `[N, ...]` as f32 values (borrowed, no copy, for contiguous f32).
fn state_values<'a>(t: &'a Borrowed<'_>) -> PyResult<std::borrow::Cow<'a, [f32]>> {
    match t.contiguous_f32() {
        Some(s) => Ok(std::borrow::Cow::Borrowed(s)),
        None => Ok(std::borrow::Cow::Owned(t.to_f32()?)),
    }
}

/// Byte range `[lo, hi)` a tensor's elements lie in.
fn byte_range(t: &Borrowed<'_>) -> (u64, u64) {
    (t.addr(), t.addr() + t.meta().span_bytes() as u64)
}

/// Writes f32 values into a state tensor (memcpy for contiguous f32).
fn write_state_values(t: &Borrowed<'_>, vals: &[f32]) -> PyResult<()> {
    if t.contiguous_f32().is_some() {
        let mut v = t.sub_mut(0, t.shape(), t.strides())?;
        v.host_slice_mut::<f32>().py_err()?[..vals.len()].copy_from_slice(vals);
        return Ok(());
    }
    t.write_f32(vals)
}

/// fla's in-kernel gate of a call: `g = -exp(A_log) * softplus(g + dt_bias)` when `A_log` is
/// given (`use_gate_in_kernel`), `beta = sigmoid(beta)` with `beta_sigmoid`
/// (`use_beta_sigmoid_in_kernel`); neither: the delta rule reads `g` and `beta` as given.
struct KernelGate<'a> {
    a_log: Option<TensorRef<'a>>,
    dt_bias: Option<TensorRef<'a>>,
    beta_sigmoid: bool,
    hv: usize,
}

/// The f32 g and beta a [`KernelGate`] writes for the tokens of one kernel call, and the
/// zeros it reads for an absent `A_log` / `dt_bias`.
struct GateBuffers {
    tokens: usize,
    g: Vec<f32>,
    beta: Vec<f32>,
    zeros: Vec<f32>,
}

impl KernelGate<'_> {
    fn in_kernel(&self) -> bool {
        self.a_log.is_some()
    }

    /// Buffers for a call of `tokens` tokens (empty when there is no gate to run).
    fn buffers(&self, tokens: usize) -> GateBuffers {
        let n = if self.in_kernel() || self.beta_sigmoid { tokens * self.hv } else { 0 };
        // the zeros too only when the gate runs (a plain decode step allocates nothing here)
        let zeros = vec![0f32; if n > 0 { self.hv } else { 0 }];
        GateBuffers { tokens, g: vec![0f32; n], beta: vec![0f32; n], zeros }
    }

    /// The g and beta the delta rule reads: the gate's outputs (run into `out`, sized by
    /// [`Self::buffers`]) where it applies, else `g` / `beta` themselves.
    fn apply<'b>(
        &self,
        backend: &Backend,
        dims: &ModelDims,
        g: TensorRef<'b>,
        beta: TensorRef<'b>,
        out: &'b mut GateBuffers,
    ) -> deltanet::Result<(TensorRef<'b>, TensorRef<'b>)>
    where
        Self: 'b,
    {
        if !self.in_kernel() && !self.beta_sigmoid {
            return Ok((g, beta));
        }
        let (hv, tokens) = (self.hv, out.tokens);
        let zero_view = TensorRef::from_slice(&out.zeros, &[hv])?;
        let io = GateIo {
            // Only the outputs asked for are used: g from `g` when the gate is in
            // the kernel, beta from `beta` when its sigmoid is.
            a: if self.in_kernel() { g } else { beta },
            b: beta,
            a_log: self.a_log.unwrap_or(zero_view),
            dt_bias: self.dt_bias.unwrap_or(zero_view),
            g: TensorMut::from_slice(&mut out.g, &[tokens, hv])?,
            beta: TensorMut::from_slice(&mut out.beta, &[tokens, hv])?,
        };
        backend.gate(dims, io)?;
        let out: &'b GateBuffers = out;
        let gq = if self.in_kernel() { TensorRef::from_slice(&out.g, &[tokens, hv])? } else { g };
        let bq = if self.beta_sigmoid { TensorRef::from_slice(&out.beta, &[tokens, hv])? } else { beta };
        Ok((gq, bq))
    }
}

/// Refuses tensors that overlap `state`, which the call updates in place while it reads them.
fn refuse_overlap(state: &Borrowed<'_>, tensors: &[&Borrowed<'_>]) -> PyResult<()> {
    let (lo, hi) = byte_range(state);
    for t in tensors {
        let (tlo, thi) = byte_range(t);
        if tlo < hi && lo < thi {
            return Err(raise("LayoutError", format!("tensor `{}` overlaps `{}`, which is updated in place", t.name, state.name)));
        }
    }
    Ok(())
}

/// The delta rule of `chunk_gated_delta_rule` / `fused_recurrent_gated_delta_rule`
/// on caller tensors (see `deltanet/functional.py` for the argument contract).
#[pyfunction]
#[pyo3(signature = (q, k, v, g, beta, o, *, scale, initial_state=None, output_final_state=false, inplace=false,
    cu_seqlens=None, use_qk_l2norm=false, state_v_first=false, A_log=None, dt_bias=None, beta_sigmoid=false))]
#[allow(clippy::too_many_arguments, non_snake_case)]
pub fn gated_delta_rule(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    g: &Bound<'_, PyAny>,
    beta: &Bound<'_, PyAny>,
    o: &Bound<'_, PyAny>,
    scale: f32,
    initial_state: Option<&Bound<'_, PyAny>>,
    output_final_state: bool,
    inplace: bool,
    cu_seqlens: Option<Vec<i64>>,
    use_qk_l2norm: bool,
    state_v_first: bool,
    A_log: Option<&Bound<'_, PyAny>>,
    dt_bias: Option<&Bound<'_, PyAny>>,
    beta_sigmoid: bool,
) -> PyResult<Option<StateView>> {
    guard(|| {
        let (q, k, v) = (borrow("q", q, false)?, borrow("k", k, false)?, borrow("v", v, false)?);
        let (g, beta, o) = (borrow("g", g, false)?, borrow("beta", beta, false)?, borrow("o", o, true)?);
        let h0 = borrow_opt("initial_state", initial_state, inplace)?;
        let a_log = borrow_opt("A_log", A_log, false)?;
        let dt_bias = borrow_opt("dt_bias", dt_bias, false)?;
        if q.shape().len() != 4 {
            return Err(raise("ShapeError", format!("tensor `q`: expected [B, T, H, K], got {:?}", q.shape())));
        }
        let (b, t, hk, kd) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        if v.shape().len() != 4 {
            return Err(raise("ShapeError", format!("tensor `v`: expected [B, T, HV, V], got {:?}", v.shape())));
        }
        let (hv, vd) = (v.shape()[2], v.shape()[3]);
        expect_shape(&k, &[b, t, hk, kd], "like q")?;
        expect_shape(&v, &[b, t, hv, vd], "[B, T, HV, V]")?;
        expect_shape(&o, &[b, t, hv, vd], "like v")?;
        expect_shape(&g, &[b, t, hv], "[B, T, HV]")?;
        expect_shape(&beta, &[b, t, hv], "[B, T, HV]")?;
        let dims = ModelDims::new(hk, hv, kd, vd, 2).py_err()?;
        let cu: Vec<usize> = match cu_seqlens {
            Some(c) => {
                if b != 1 {
                    return Err(raise("ShapeError", format!("cu_seqlens needs batch size 1, got B = {b}")));
                }
                if c.iter().any(|&x| x < 0) {
                    return Err(raise("ShapeError", "cu_seqlens has a negative offset"));
                }
                let c: Vec<usize> = c.iter().map(|&x| x as usize).collect();
                deltanet::batch::validate_cu_seqlens(&c).py_err()?;
                if *c.last().expect("validated") != t {
                    return Err(raise(
                        "ShapeError",
                        format!("cu_seqlens ends at {}, the inputs have T = {t} tokens", c.last().expect("validated")),
                    ));
                }
                c
            }
            None => (0..=b).map(|i| i * t).collect(),
        };
        let n = cu.len() - 1;
        let state_shape = if state_v_first { [n, hv, vd, kd] } else { [n, hv, kd, vd] };
        if let Some(h0) = &h0 {
            expect_shape(h0, &state_shape, "[N, HV, K, V], or [N, HV, V, K] with state_v_first")?;
        }
        if inplace && h0.is_none() {
            return Err(raise("ShapeError", "inplace_final_state needs an initial_state to write the final state into"));
        }
        for (name, x) in [("A_log", &a_log), ("dt_bias", &dt_bias)] {
            if let Some(x) = x {
                if x.shape() != [hv] {
                    return Err(raise("ShapeError", format!("tensor `{name}`: expected shape [{hv}], got {:?}", x.shape())));
                }
            }
        }
        if t == 0 {
            return Err(raise("ShapeError", "T = 0 tokens"));
        }

        let layout = if state_v_first { LayoutKind::VMajor } else { LayoutKind::KMajor };
        let backend = cpu_backend(state_v_first)?;
        let params = DeltaParams { scale, use_qk_l2norm };
        let groups = Groups::new(b, t, &[&q, &k, &v, &g, &beta, &o]);
        let gate = KernelGate { a_log: a_log.as_ref().map(|x| x.view()), dt_bias: dt_bias.as_ref().map(|x| x.view()), beta_sigmoid, hv };
        // In place on deltanet's own states when `initial_state` is one of them; else a fresh pool.
        let reused = if inplace { h0.as_ref().and_then(|h| states::find(h, layout, &dims)) } else { None };
        let is_decode = n > 0 && cu.windows(2).all(|w| w[1] - w[0] == 1);
        if let (true, None, true, Some(h0)) = (inplace, &reused, is_decode, &h0) {
            if h0.contiguous_f32().is_some() {
                // A caller's own state (an engine's cache buffer) at a decode step: the kernel
                // advances it where it lies, as it would a pool's, instead of staging it through one.
                let rows = 0..groups.b;
                let io = DeltaIo {
                    q: groups.view(&q, &rows)?,
                    k: groups.view(&k, &rows)?,
                    v: groups.view(&v, &rows)?,
                    g: groups.view(&g, &rows)?,
                    beta: groups.view(&beta, &rows)?,
                    o: groups.view_mut(&o, &rows)?,
                    params,
                };
                let inputs: Vec<_> = [&q, &k, &v, &g, &beta, &o].into_iter().chain(a_log.as_ref()).chain(dt_bias.as_ref()).collect();
                return decode_caller_state(py, backend, &dims, &gate, io, h0, &inputs).map(|()| None);
            }
        }
        let fresh = reused.is_none();
        let shared = match reused {
            Some(s) => s,
            None => OwnedStates::new(backend, layout, n, dims)?,
        };
        let slots = &shared.slots;
        if !fresh {
            // The kernels write the pool while reading the inputs: refuse inputs that alias it.
            for x in [&q, &k, &v, &g, &beta, &o] {
                let (lo, hi) = byte_range(x);
                if shared.overlaps(lo, hi) {
                    return Err(raise("LayoutError", format!("tensor `{}` overlaps the state it updates in place", x.name)));
                }
            }
        }
        let mut pool = shared.lock(py);
        if let (true, Some(h0)) = (fresh, &h0) {
            staging::write(&mut pool, Part::Temporal(layout), slots, &state_values(h0)?)?;
        }
        for rows in groups.rows() {
            // The sequences of these rows: all of cu_seqlens when packed, else row r alone.
            let (cu_g, slots_g): (Vec<usize>, Vec<Slot>) =
                if groups.packed { (cu.clone(), slots.clone()) } else { (vec![0, t], vec![slots[rows.start]]) };
            let tokens = *cu_g.last().expect("non-empty");
            let (qv, kv, vv) = (groups.view(&q, &rows)?, groups.view(&k, &rows)?, groups.view(&v, &rows)?);
            let (gv, bv, ov) = (groups.view(&g, &rows)?, groups.view(&beta, &rows)?, groups.view_mut(&o, &rows)?);
            let mut gate_out = gate.buffers(tokens);
            let has_init = vec![h0.is_some(); slots_g.len()];
            let decode = cu_g.windows(2).all(|w| w[1] - w[0] == 1);
            let pool_ref = &mut *pool;
            py.allow_threads(|| -> deltanet::Result<()> {
                let (gq, bq) = gate.apply(backend, &dims, gv, bv, &mut gate_out)?;
                let io = DeltaIo { q: qv, k: kv, v: vv, g: gq, beta: bq, o: ov, params };
                if decode {
                    // One token per sequence: the decode kernel (the pool starts zeroed, so a
                    // sequence without initial state starts from zero as extend would).
                    let batch = DecodeBatch::new(pool_ref.as_dyn(), &slots_g)?;
                    backend.decode(pool_ref, 0, &batch, io)
                } else {
                    let batch = ExtendBatch::new(pool_ref.as_dyn(), &cu_g, &slots_g, &has_init)?;
                    backend.extend(pool_ref, 0, &batch, io)
                }
            })
            .py_err()?;
        }
        if inplace {
            if fresh {
                // A caller tensor deltanet does not own: the final state goes back into it.
                let vals = staging::read(&pool, Part::Temporal(layout), slots)?;
                write_state_values(h0.as_ref().expect("checked above"), &vals)?;
            }
            return Ok(None); // the final state is `initial_state` itself
        }
        drop(pool);
        Ok(output_final_state.then(|| states::view(shared)))
    })
}

/// A decode step (one token per sequence, `io`'s rows) on the caller's contiguous f32 state
/// `h0` (`[N, HV, K, V]`, or `[N, HV, V, K]` on the V-major backend), advanced in place by the
/// CPU kernel (`CpuDispatcher::decode_caller_state`: the same bits as a decode on a pool
/// holding it) after the call's in-kernel gate, with the GIL released. No pool, no state copy
/// in or out. Refuses `inputs` (the tensors `io` and `gate` view) that overlap `h0`.
fn decode_caller_state(
    py: Python<'_>,
    backend: &Backend,
    dims: &ModelDims,
    gate: &KernelGate<'_>,
    io: DeltaIo<'_>,
    h0: &Borrowed<'_>,
    inputs: &[&Borrowed<'_>],
) -> PyResult<()> {
    refuse_overlap(h0, inputs)?;
    let mut gate_out = gate.buffers(io.q.meta().shape().first().copied().unwrap_or(0));
    let mut sv = h0.sub_mut(0, h0.shape(), h0.strides())?;
    let state = sv.host_slice_mut::<f32>().py_err()?;
    py.allow_threads(|| -> deltanet::Result<()> {
        let (g, beta) = gate.apply(backend, dims, io.g, io.beta, &mut gate_out)?;
        let io = DeltaIo { g, beta, ..io };
        match backend {
            Backend::CpuKMajor(d) => d.decode_caller_state(dims, io, state),
            Backend::CpuVMajor(d) => d.decode_caller_state(dims, io, state),
            _ => Err(deltanet::Error::Unavailable { backend: backend.name().into(), reason: "not a CPU backend".into() }),
        }
    })
    .py_err()
}

/// Conv dims whose `conv_dim` is `dim` (the conv kernels only read `conv_dim` and `W`).
fn conv_dims(dim: usize, width: usize) -> PyResult<ModelDims> {
    if dim < 3 {
        return Err(raise("ShapeError", format!("conv dim {dim} < 3 is not supported")));
    }
    ModelDims::new(1, 1, 1, dim - 2, width).py_err()
}

struct ConvCall<'a, 'py> {
    x: &'a Borrowed<'py>,
    weight: &'a Borrowed<'py>,
    bias: Option<&'a Borrowed<'py>>,
    out: &'a Borrowed<'py>,
}

/// A conv call's pool: one layer, `b` slots.
struct ConvPool {
    key: (usize, ModelDims),
    pool: Pool,
    slots: Vec<Slot>,
}

/// Conv pools kept between calls. A conv call's pool holds nothing a later call reads (each
/// call writes the window it starts from, or starts from zero with `has_initial_state` false),
/// and at decode sizes allocating one costs more than the kernel.
static CONV_POOLS: Mutex<Vec<ConvPool>> = Mutex::new(Vec::new());
const KEPT_CONV_POOLS: usize = 8;

fn conv_pools() -> std::sync::MutexGuard<'static, Vec<ConvPool>> {
    // Every mutation is one push or remove: a panic cannot leave the list half-updated.
    CONV_POOLS.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConvPool {
    fn take(backend: &Backend, b: usize, dims: ModelDims) -> PyResult<ConvPool> {
        let key = (b, dims);
        let kept = {
            let mut kept = conv_pools();
            kept.iter().position(|p| p.key == key).map(|i| kept.swap_remove(i))
        };
        if let Some(p) = kept {
            return Ok(p);
        }
        let (pool, slots) = states::one_layer_pool(backend, b, dims)?;
        Ok(ConvPool { key, pool, slots })
    }
    fn give_back(self) {
        let mut kept = conv_pools();
        if kept.len() >= KEPT_CONV_POOLS {
            kept.remove(0);
        }
        kept.push(self);
    }
}

/// Runs the conv kernels over `[B, T, dim]` token-major `x`/`out`, each row
/// continuing the conv state in its slot (when `window` holds `[B, dim, W-1]` values).
fn run_conv(py: Python<'_>, c: &ConvCall<'_, '_>, window: Option<&[f32]>) -> PyResult<ConvPool> {
    let xs = c.x.shape();
    if xs.len() != 3 {
        return Err(raise("ShapeError", format!("tensor `x`: expected [B, dim, T], got rank {}", xs.len())));
    }
    let (b, t, dim) = (xs[0], xs[1], xs[2]);
    if c.weight.shape().len() != 2 || c.weight.shape()[0] != dim {
        return Err(raise("ShapeError", format!("tensor `weight`: expected [{dim}, W], got {:?}", c.weight.shape())));
    }
    let width = c.weight.shape()[1];
    if let Some(bias) = c.bias {
        expect_shape(bias, &[dim], "[dim]")?;
    }
    expect_shape(c.out, &[b, t, dim], "like x")?;
    if t == 0 {
        return Err(raise("ShapeError", "T = 0 tokens"));
    }
    let dims = conv_dims(dim, width)?;
    let backend = cpu_backend(false)?;
    let mut cp = ConvPool::take(backend, b, dims)?;
    let ConvPool { pool, slots, .. } = &mut cp;
    if let Some(w) = window {
        staging::write(pool, Part::Conv, slots, w)?;
    }
    let groups = Groups::new(b, t, &[c.x, c.out]);
    for rows in groups.rows() {
        let (cu_g, slots_g): (Vec<usize>, Vec<Slot>) =
            if groups.packed { ((0..=b).map(|i| i * t).collect(), slots.clone()) } else { (vec![0, t], vec![slots[rows.start]]) };
        let io = ConvIo {
            x: groups.view(c.x, &rows)?,
            weight: c.weight.view(),
            bias: c.bias.map(|x| x.view()),
            out: groups.view_mut(c.out, &rows)?,
        };
        let has_init = vec![window.is_some(); slots_g.len()];
        let pool_ref = &mut *pool;
        py.allow_threads(|| -> deltanet::Result<()> {
            if t == 1 && window.is_some() {
                let batch = DecodeBatch::new(pool_ref.as_dyn(), &slots_g)?;
                backend.conv_update(pool_ref, 0, &batch, io)
            } else {
                let batch = ExtendBatch::new(pool_ref.as_dyn(), &cu_g, &slots_g, &has_init)?;
                backend.conv_extend(pool_ref, 0, &batch, io)
            }
        })
        .py_err()?;
    }
    Ok(cp)
}

/// `causal_conv1d_fn` on token-major `x`/`out` `[B, T, dim]`.
#[pyfunction]
#[pyo3(signature = (x, weight, bias, out, initial_states=None, final_states=None))]
pub fn causal_conv1d(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    out: &Bound<'_, PyAny>,
    initial_states: Option<&Bound<'_, PyAny>>,
    final_states: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    guard(|| {
        let (x, weight, out) = (borrow("x", x, false)?, borrow("weight", weight, false)?, borrow("out", out, true)?);
        let bias = borrow_opt("bias", bias, false)?;
        let init = borrow_opt("initial_states", initial_states, false)?;
        let fin = borrow_opt("final_states", final_states, true)?;
        let (b, dim, w) = (x.shape()[0], *x.shape().last().unwrap_or(&0), *weight.shape().last().unwrap_or(&1));
        let want = [b, dim, w.saturating_sub(1)];
        if let Some(s) = &init {
            expect_shape(s, &want, "[B, dim, W-1]")?;
        }
        if let Some(s) = &fin {
            expect_shape(s, &want, "[B, dim, W-1]")?;
        }
        let window = init.as_ref().map(state_values).transpose()?;
        let call = ConvCall { x: &x, weight: &weight, bias: bias.as_ref(), out: &out };
        let cp = run_conv(py, &call, window.as_deref())?;
        if let Some(fin) = &fin {
            let vals = staging::read(&cp.pool, Part::Conv, &cp.slots)?;
            write_state_values(fin, &vals)?;
        }
        cp.give_back();
        Ok(())
    })
}

/// `causal_conv1d_update`: `x`/`out` token-major `[B, T, dim]` (or, with
/// `channels_first`, `[B, dim, T]` as causal-conv1d passes them, read through
/// their strides), `conv_state` `[B, dim, S]` (`S >= W-1`) updated in place to
/// the last `S` inputs.
#[pyfunction]
#[pyo3(signature = (x, conv_state, weight, bias, out, channels_first=false))]
pub fn causal_conv1d_update(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    conv_state: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    out: &Bound<'_, PyAny>,
    channels_first: bool,
) -> PyResult<()> {
    guard(|| {
        let (mut x, weight, mut out) = (borrow("x", x, false)?, borrow("weight", weight, false)?, borrow("out", out, true)?);
        if channels_first {
            // the kernels read token-major rows: the same memory with the last two dims swapped
            (x, out) = (x.transpose_last()?, out.transpose_last()?);
        }
        let state = borrow("conv_state", conv_state, true)?;
        let bias = borrow_opt("bias", bias, false)?;
        let xs = x.shape().to_vec();
        if xs.len() != 3 || weight.shape().len() != 2 {
            return Err(raise("ShapeError", format!("x must be [B, dim, T] and weight [dim, W]; got {:?}, {:?}", xs, weight.shape())));
        }
        let (b, t, dim, w) = (xs[0], xs[1], xs[2], weight.shape()[1]);
        if w < 2 {
            return Err(raise("ShapeError", format!("tensor `weight`: conv width {w} < 2")));
        }
        let ss = state.shape().to_vec();
        if ss.len() != 3 || ss[0] != b || ss[1] != dim || ss[2] + 1 < w {
            return Err(raise(
                "ShapeError",
                format!("tensor `conv_state`: expected [{b}, {dim}, S] with S >= W-1 = {}, got {ss:?}", w - 1),
            ));
        }
        let (s_len, keep) = (ss[2], w - 1);
        if t == 1 && state.contiguous_f32().is_some() {
            // A decode step on a cache's contiguous f32 state: the kernel reads and shifts
            // the caller's rows where they lie (no window copied in or out).
            return conv_update_caller_state(py, &x, &state, &weight, bias.as_ref(), &out, s_len);
        }
        // The kernel convolves over the newest W-1 columns of each (row, channel).
        let window: Vec<f32> = {
            let old = state_values(&state)?;
            let mut window = vec![0f32; b * dim * keep];
            newest_columns(&old, s_len, &mut window, keep);
            window
        };
        let call = ConvCall { x: &x, weight: &weight, bias: bias.as_ref(), out: &out };
        run_conv(py, &call, Some(&window))?.give_back();
        // The kernel succeeded: shift the caller's state by T and append x.
        let xv = state_values(&x)?;
        if state.contiguous_f32().is_some() {
            // In place on the caller's memory (the common case: a cache's contiguous f32 state).
            let mut sv = state.sub_mut(0, state.shape(), state.strides())?;
            shift_in(sv.host_slice_mut::<f32>().py_err()?, s_len, t, dim, &xv);
        } else {
            let mut new = state.to_f32()?;
            shift_in(&mut new, s_len, t, dim, &xv);
            write_state_values(&state, &new)?;
        }
        Ok(())
    })
}

/// One token per sequence on the caller's contiguous f32 conv state `[B, dim, s_len]`,
/// updated in place by the CPU kernel (`CpuKMajor::conv_update_caller_state`); `x` / `out`
/// token-major `[B, 1, dim]`. Refuses inputs that overlap the state it writes.
fn conv_update_caller_state(
    py: Python<'_>,
    x: &Borrowed<'_>,
    state: &Borrowed<'_>,
    weight: &Borrowed<'_>,
    bias: Option<&Borrowed<'_>>,
    out: &Borrowed<'_>,
    s_len: usize,
) -> PyResult<()> {
    let (b, dim) = (x.shape()[0], x.shape()[2]);
    refuse_overlap(state, &[Some(x), Some(weight), bias, Some(out)].into_iter().flatten().collect::<Vec<_>>())?;
    let Backend::CpuKMajor(cpu) = cpu_backend(false)? else {
        return Err(raise("UnavailableError", "the CPU backend is not compiled in"));
    };
    let rows = |t: &Borrowed<'_>| -> (Vec<usize>, Vec<usize>) { (vec![b, dim], vec![t.strides()[0], t.strides()[2]]) };
    let ((xs, xst), (os, ost)) = (rows(x), rows(out));
    let io = ConvIo { x: x.sub(0, &xs, &xst)?, weight: weight.view(), bias: bias.map(|t| t.view()), out: out.sub_mut(0, &os, &ost)? };
    let mut sv = state.sub_mut(0, state.shape(), state.strides())?;
    let st = sv.host_slice_mut::<f32>().py_err()?;
    py.allow_threads(|| cpu.conv_update_caller_state(io, st, s_len)).py_err()
}

/// Copies the last `keep` columns of each `s_len`-column row of `rows` into `window`
/// (`keep` columns per row). A decode step does this for every (sequence, channel): the copy
/// length is a constant for the usual widths, so no row pays a `memcpy` call.
fn newest_columns(rows: &[f32], s_len: usize, window: &mut [f32], keep: usize) {
    fn fixed<const N: usize>(rows: &[f32], s_len: usize, window: &mut [f32]) {
        for (dst, row) in window.chunks_exact_mut(N).zip(rows.chunks_exact(s_len)) {
            let src: &[f32; N] = row[s_len - N..].try_into().expect("N <= s_len");
            dst.copy_from_slice(src);
        }
    }
    match keep {
        1 => fixed::<1>(rows, s_len, window),
        2 => fixed::<2>(rows, s_len, window),
        3 => fixed::<3>(rows, s_len, window),
        4 => fixed::<4>(rows, s_len, window),
        _ => {
            for (dst, row) in window.chunks_exact_mut(keep).zip(rows.chunks_exact(s_len)) {
                dst.copy_from_slice(&row[s_len - keep..]);
            }
        }
    }
}

/// Shifts every `s_len`-element row of `state` (one per (sequence, channel), oldest first)
/// left by `t` and appends that row's `t` new inputs from token-major `x` `[B, t, dim]`.
///
/// One `memmove` of the whole buffer shifts every row at once (element `j < s_len - t` of a
/// row comes from `j + t` of the same row); the last `t` elements of each row, which that
/// move filled from the next row, are then overwritten with the inputs.
fn shift_in(state: &mut [f32], s_len: usize, t: usize, dim: usize, x: &[f32]) {
    if t < s_len {
        state.copy_within(t.., 0);
    }
    let first = s_len.saturating_sub(t);
    for (seq, rows) in state.chunks_exact_mut(dim * s_len).enumerate() {
        let x_seq = &x[seq * t * dim..(seq + 1) * t * dim];
        for (channel, row) in rows.chunks_exact_mut(s_len).enumerate() {
            for (j, v) in row[first..].iter_mut().enumerate() {
                *v = x_seq[(first + j + t - s_len) * dim + channel];
            }
        }
    }
}
