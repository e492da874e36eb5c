//! `Backend` and `Pool`: the serving-engine API. A pool is allocated once in
//! its backend's layout and dtypes; every kernel runs on it in place, with
//! slot indices as Python ints (tensors, arrays or sequences of them) and
//! packed varlen tensors (`q, k [T, HK, K]`, `v, o [T, HV, V]`, `g, beta [T, HV]`,
//! `mixed_qkv [T, conv_dim]`), the way sglang's GDN backend calls its kernels.
//!
//! Threads: every method releases the GIL before taking the pool's lock, so
//! two Python threads using one pool serialise without deadlock.

use crate::errors::{guard, raise, IntoPy};
use crate::slots::{slot_to_py, slots_from_py};
use crate::tensor::{borrow, borrow_opt, Borrowed};
use deltanet::{
    commit, Backend, BackendVisitor, BufferKind, CommitBatch, ConvIo, DType, DecodeBatch, DeltaIo, DeltaParams, ExtendBatch, GateIo,
    HeadMapping, HostState, KernelDispatcher, LayerInput, LayerWeights, LayoutKind, ModelDims, Pool, PoolConfig, Slot, Snapshot, SpecMode,
    TensorMut, VerifyBatch,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::sync::{Arc, Mutex};

/// Python ints from an int, a sequence, a numpy array or a torch tensor.
fn ints(obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let obj = if obj.hasattr("tolist")? { obj.call_method0("tolist")? } else { obj.clone() };
    if let Ok(i) = obj.extract::<i64>() {
        return Ok(vec![i]);
    }
    obj.extract::<Vec<i64>>()
}

fn slots_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Slot>> {
    let raw = ints(obj)?;
    if let Some(bad) = raw.iter().find(|&&r| r < 0) {
        return Err(raise("SlotError", format!("slot handle {bad} is negative")));
    }
    slots_from_py(&raw.iter().map(|&r| r as u64).collect::<Vec<_>>())
}

fn usizes(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<usize>> {
    ints(obj)?
        .into_iter()
        .map(|x| usize::try_from(x).map_err(|_| raise("ShapeError", format!("`{name}` has a negative entry {x}"))))
        .collect()
}

/// `accepted` of a commit: per request an accepted step (an int `>= 0`) or
/// `None` (nothing accepted: the request is skipped); one int for one request.
fn accepted_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Option<usize>>> {
    let obj = if obj.hasattr("tolist")? { obj.call_method0("tolist")? } else { obj.clone() };
    let step =
        |x: i64| usize::try_from(x).map_err(|_| raise("ShapeError", format!("`accepted` has a negative entry {x} (None skips a request)")));
    if let Ok(i) = obj.extract::<i64>() {
        return Ok(vec![Some(step(i)?)]);
    }
    obj.try_iter()?
        .map(|x| {
            let x = x?;
            if x.is_none() {
                Ok(None)
            } else {
                step(x.extract()?).map(Some)
            }
        })
        .collect()
}

/// `config` with speculative buffers for `draft_tokens` in the mode named
/// `spec_mode` ("scratch" or "replay"); none when `draft_tokens` is 0 and the
/// mode is the default (a replay pool without drafts is refused by the pool).
fn with_spec(config: PoolConfig, draft_tokens: usize, spec_mode: &str) -> PyResult<PoolConfig> {
    let mode: SpecMode = spec_mode.parse().py_err()?;
    Ok(match (draft_tokens, mode) {
        (0, SpecMode::Scratch) => config,
        _ => config.with_speculative(draft_tokens).with_spec_mode(mode),
    })
}

fn dtype_arg(s: &str) -> PyResult<DType> {
    DType::parse(s).ok_or_else(|| raise("DTypeError", format!("unknown dtype `{s}` (f32, bf16, f16)")))
}

/// A backend chosen by name: `"cpu"` (K-major pool), `"cpu-vk"` (V-major), `"cuda:N"`, `"npu:N"`.
#[pyclass(name = "Backend", module = "deltanet", frozen)]
pub struct PyBackend {
    inner: Arc<Backend>,
}

#[pymethods]
impl PyBackend {
    #[new]
    #[pyo3(signature = (name = "cpu"))]
    fn new(name: &str) -> PyResult<Self> {
        guard(|| Ok(PyBackend { inner: Arc::new(Backend::from_name(name).py_err()?) }))
    }
    /// The backend's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }
    /// Recurrent-state layout of its pools: `"k-major"` or `"v-major"`.
    #[getter]
    fn layout(&self) -> &'static str {
        self.inner.layout().name()
    }
    /// What it supports (dtypes, layouts, limits, chunk size).
    fn capabilities<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.capabilities();
        let d = PyDict::new(py);
        let names = |v: &[DType]| v.iter().map(|x| x.name()).collect::<Vec<_>>();
        d.set_item("backend", &c.backend)?;
        d.set_item("device", c.device.to_string())?;
        d.set_item("native_layout", c.native_layout.name())?;
        d.set_item("conv_layout", format!("{:?}", c.conv_layout))?;
        d.set_item("state_dtypes", names(&c.state_dtypes))?;
        d.set_item("conv_dtypes", names(&c.conv_dtypes))?;
        d.set_item("input_dtypes", names(&c.input_dtypes))?;
        d.set_item("max_draft_tokens", c.max_draft_tokens)?;
        d.set_item("max_head_dim", c.limits.max_head_dim)?;
        d.set_item("chunk_size", c.chunk_size)?;
        Ok(d)
    }
    /// The fused gate: `g = -exp(A_log) * softplus(a + dt_bias)`, `beta = sigmoid(b)`;
    /// `a, b [T, HV]`, `A_log, dt_bias [HV]` f32, outputs `g, beta [T, HV]` f32.
    #[pyo3(signature = (a, b, A_log, dt_bias, g, beta))]
    #[allow(non_snake_case, clippy::too_many_arguments)]
    fn gate(
        &self,
        py: Python<'_>,
        a: &Bound<'_, PyAny>,
        b: &Bound<'_, PyAny>,
        A_log: &Bound<'_, PyAny>,
        dt_bias: &Bound<'_, PyAny>,
        g: &Bound<'_, PyAny>,
        beta: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guard(|| {
            let (a, b) = (borrow("a", a, false)?, borrow("b", b, false)?);
            let (al, dt) = (borrow("A_log", A_log, false)?, borrow("dt_bias", dt_bias, false)?);
            let (g, beta) = (borrow("g", g, true)?, borrow("beta", beta, true)?);
            if a.shape().len() != 2 {
                return Err(raise("ShapeError", format!("tensor `a`: expected [T, HV], got {:?}", a.shape())));
            }
            let hv = a.shape()[1];
            let dims = ModelDims::new(1, hv, 1, 1, 2).py_err()?;
            let io = GateIo { a: a.view(), b: b.view(), a_log: al.view(), dt_bias: dt.view(), g: whole_mut(&g)?, beta: whole_mut(&beta)? };
            let backend = &self.inner;
            py.allow_threads(|| backend.gate(&dims, io)).py_err()
        })
    }
    fn __repr__(&self) -> String {
        format!("Backend({:?}, layout={:?})", self.inner.name(), self.inner.layout().name())
    }
}

fn whole_mut<'a>(t: &'a Borrowed<'_>) -> PyResult<TensorMut<'a>> {
    t.sub_mut(0, t.shape(), t.strides())
}

/// The weights of one layer, for the layer forward.
struct Weights<'py> {
    a_log: Borrowed<'py>,
    dt_bias: Borrowed<'py>,
    conv_weight: Borrowed<'py>,
    conv_bias: Option<Borrowed<'py>>,
}

impl Weights<'_> {
    fn view(&self) -> LayerWeights<'_> {
        LayerWeights {
            a_log: self.a_log.view(),
            dt_bias: self.dt_bias.view(),
            conv_weight: self.conv_weight.view(),
            conv_bias: self.conv_bias.as_ref().map(|b| b.view()),
        }
    }
}

/// The commit of the layer forward on whichever dispatcher the backend holds.
struct CommitVisit<'a> {
    pool: &'a mut Pool,
    layer: usize,
    batch: &'a CommitBatch,
}

impl BackendVisitor for CommitVisit<'_> {
    type Output = deltanet::Result<()>;
    fn visit<D: KernelDispatcher>(self, d: &D) -> deltanet::Result<()> {
        commit(d, self.pool.typed_mut::<D>()?, self.layer, self.batch)
    }
}

/// The per-request state pool of one model (all its GDN layers), in its backend's layout.
///
/// Slots are Python ints; slot 0 is the padding slot and never handed out.
#[pyclass(name = "Pool", module = "deltanet", frozen)]
pub struct PyPool {
    backend: Arc<Backend>,
    inner: Mutex<Pool>,
    config: PoolConfig,
}

/// Packed delta-rule tensors of one call.
struct Delta<'py> {
    q: Borrowed<'py>,
    k: Borrowed<'py>,
    v: Borrowed<'py>,
    g: Borrowed<'py>,
    beta: Borrowed<'py>,
    o: Borrowed<'py>,
}

impl<'py> Delta<'py> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        q: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
        v: &Bound<'py, PyAny>,
        g: &Bound<'py, PyAny>,
        beta: &Bound<'py, PyAny>,
        o: &Bound<'py, PyAny>,
    ) -> PyResult<Self> {
        Ok(Delta {
            q: borrow("q", q, false)?,
            k: borrow("k", k, false)?,
            v: borrow("v", v, false)?,
            g: borrow("g", g, false)?,
            beta: borrow("beta", beta, false)?,
            o: borrow("o", o, true)?,
        })
    }
    fn io(&self, params: DeltaParams) -> PyResult<DeltaIo<'_>> {
        Ok(DeltaIo {
            q: self.q.view(),
            k: self.k.view(),
            v: self.v.view(),
            g: self.g.view(),
            beta: self.beta.view(),
            o: whole_mut(&self.o)?,
            params,
        })
    }
}

/// Packed conv tensors of one call.
struct Conv<'py> {
    x: Borrowed<'py>,
    weight: Borrowed<'py>,
    bias: Option<Borrowed<'py>>,
    out: Borrowed<'py>,
}

impl<'py> Conv<'py> {
    fn new(x: &Bound<'py, PyAny>, weight: &Bound<'py, PyAny>, bias: Option<&Bound<'py, PyAny>>, out: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(Conv {
            x: borrow("x", x, false)?,
            weight: borrow("weight", weight, false)?,
            bias: borrow_opt("bias", bias, false)?,
            out: borrow("out", out, true)?,
        })
    }
    fn io(&self) -> PyResult<ConvIo<'_>> {
        Ok(ConvIo { x: self.x.view(), weight: self.weight.view(), bias: self.bias.as_ref().map(|b| b.view()), out: whole_mut(&self.out)? })
    }
}

fn snapshots_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Snapshot>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for item in obj.try_iter()? {
        let (seq, position, slot): (usize, usize, u64) = item?.extract()?;
        out.push(Snapshot { seq, position, slot: crate::slots::slot_from_py(slot)? });
    }
    Ok(out)
}

fn parents_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<i64>>> {
    obj.filter(|o| !o.is_none()).map(ints).transpose()
}

fn params(dims: &ModelDims, scale: Option<f32>, use_qk_l2norm: bool) -> DeltaParams {
    DeltaParams { scale: scale.unwrap_or((dims.head_k_dim as f32).powf(-0.5)), use_qk_l2norm }
}

impl PyPool {
    /// Runs `f` on the pool with the GIL released (then the lock taken).
    fn with<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&Backend, &mut Pool) -> deltanet::Result<R> + Send) -> PyResult<R> {
        let backend = &*self.backend;
        let inner = &self.inner;
        py.allow_threads(|| {
            // A panic inside a kernel is caught by `guard` before the lock's poison matters;
            // the pool itself is unchanged by a failed call (core contract).
            let mut p = inner.lock().unwrap_or_else(|e| e.into_inner());
            f(backend, &mut p)
        })
        .py_err()
    }

    fn extend_batch(p: &Pool, cu: &[usize], slots: &[Slot], has_init: &[bool], snaps: &[Snapshot]) -> deltanet::Result<ExtendBatch> {
        ExtendBatch::new(p.as_dyn(), cu, slots, has_init)?.with_snapshots(p.as_dyn(), snaps)
    }

    fn verify_batch(p: &Pool, slots: &[Slot], parents: Option<&[i64]>) -> deltanet::Result<VerifyBatch> {
        match parents {
            Some(par) => VerifyBatch::tree(p.as_dyn(), slots, par),
            None => VerifyBatch::chain(p.as_dyn(), slots),
        }
    }

    fn has_init(obj: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Vec<bool>> {
        match obj.filter(|o| !o.is_none()) {
            None => Ok(vec![true; n]),
            Some(o) => {
                if let Ok(b) = o.extract::<bool>() {
                    return Ok(vec![b; n]);
                }
                Ok(ints(o)?.into_iter().map(|x| x != 0).collect())
            }
        }
    }
}

#[pymethods]
impl PyPool {
    /// A pool of `slots` requests for `layers` GDN layers of the given dims.
    #[new]
    #[pyo3(signature = (backend, *, layers, slots, num_k_heads, num_v_heads, head_k_dim, head_v_dim, conv_width = 4,
        state_dtype = "f32", conv_dtype = "f32", draft_tokens = 0, head_mapping = "grouped", spec_mode = "scratch"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        backend: &Bound<'_, PyAny>,
        layers: usize,
        slots: usize,
        num_k_heads: usize,
        num_v_heads: usize,
        head_k_dim: usize,
        head_v_dim: usize,
        conv_width: usize,
        state_dtype: &str,
        conv_dtype: &str,
        draft_tokens: usize,
        head_mapping: &str,
        spec_mode: &str,
    ) -> PyResult<Self> {
        guard(|| {
            let backend = match backend.downcast::<PyBackend>() {
                Ok(b) => b.get().inner.clone(),
                Err(_) => Arc::new(Backend::from_name(&backend.extract::<String>()?).py_err()?),
            };
            let mapping = HeadMapping::parse(head_mapping)
                .ok_or_else(|| raise("ConfigError", format!("head_mapping `{head_mapping}` (grouped or tiled)")))?;
            let dims = ModelDims::new(num_k_heads, num_v_heads, head_k_dim, head_v_dim, conv_width).py_err()?.with_head_mapping(mapping);
            let config = with_spec(
                PoolConfig::new(layers, slots, dims).with_state_dtype(dtype_arg(state_dtype)?).with_conv_dtype(dtype_arg(conv_dtype)?),
                draft_tokens,
                spec_mode,
            )?;
            let pool = backend.new_pool(config).py_err()?;
            Ok(PyPool { backend, inner: Mutex::new(pool), config })
        })
    }

    /// Recurrent layout of every state buffer: `"k-major"` or `"v-major"`.
    #[getter]
    fn layout(&self) -> &'static str {
        self.backend.layout().name()
    }
    /// Allocatable slots.
    #[getter]
    fn capacity(&self) -> usize {
        self.config.slots
    }
    /// GDN layers.
    #[getter]
    fn layers(&self) -> usize {
        self.config.layers
    }
    /// Draft tokens per request of verify (0 without speculative buffers).
    #[getter]
    fn draft_tokens(&self) -> usize {
        self.config.draft_tokens()
    }
    /// Speculative mode of verify and commit: `"scratch"` (per-step states; commit
    /// copies one back) or `"replay"` (the drafts' inputs; commit replays the
    /// accepted path); `None` without speculative buffers.
    #[getter]
    fn spec_mode(&self) -> Option<&'static str> {
        self.config.spec_mode().map(SpecMode::name)
    }
    /// Channels of the short convolution, `2*HK*K + HV*V`.
    #[getter]
    fn conv_dim(&self) -> usize {
        self.config.dims.conv_dim()
    }
    /// Slots free now.
    fn free_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |_, p| Ok(p.as_dyn().free_count()))
    }
    /// Total bytes of every buffer.
    fn bytes(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |_, p| Ok(p.as_dyn().bytes()))
    }
    /// Bytes one slot costs across all layers and buffers.
    fn bytes_per_slot(&self) -> usize {
        self.config.bytes_per_slot()
    }
    /// Allocates `n` slots (contents unspecified: zero, import, or extend without initial state).
    fn alloc(&self, py: Python<'_>, n: usize) -> PyResult<Vec<u64>> {
        guard(|| Ok(self.with(py, |_, p| p.as_dyn().alloc(n))?.into_iter().map(slot_to_py).collect()))
    }
    /// Frees slots (all or nothing; double free is a `SlotError`).
    fn free(&self, py: Python<'_>, slots: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = slots_arg(slots)?;
        guard(|| self.with(py, |_, p| p.as_dyn().free(&s)))
    }
    /// Whether `slot` is allocated.
    fn is_allocated(&self, py: Python<'_>, slot: u64) -> PyResult<bool> {
        let s = crate::slots::slot_from_py(slot)?;
        self.with(py, |_, p| Ok(p.as_dyn().is_allocated(s)))
    }
    /// Zeroes the conv and recurrent state of `slots` in every layer.
    fn zero(&self, py: Python<'_>, slots: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = slots_arg(slots)?;
        guard(|| self.with(py, |_, p| p.as_dyn_mut().zero(&s)))
    }
    /// Copies `src`'s state into `dst`.
    fn copy(&self, py: Python<'_>, src: u64, dst: u64) -> PyResult<()> {
        let (s, d) = (crate::slots::slot_from_py(src)?, crate::slots::slot_from_py(dst)?);
        guard(|| self.with(py, |_, p| p.as_dyn_mut().copy(s, d)))
    }
    /// A new slot holding a copy of `src`.
    fn fork(&self, py: Python<'_>, src: u64) -> PyResult<u64> {
        let s = crate::slots::slot_from_py(src)?;
        guard(|| self.with(py, |_, p| p.as_dyn_mut().fork(s)).map(slot_to_py))
    }
    /// A hash of every byte of every buffer (tests: "nothing changed").
    fn digest(&self, py: Python<'_>) -> PyResult<u64> {
        guard(|| self.with(py, |_, p| p.as_dyn().digest()))
    }

    /// One slot's state in canonical order as f32 numpy arrays:
    /// `(temporal [L, HV, K, V], conv [L, conv_dim, W-1])`.
    fn export_state<'py>(&self, py: Python<'py>, slot: u64) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let s = crate::slots::slot_from_py(slot)?;
        let st = guard(|| self.with(py, |_, p| p.as_dyn().export(s)))?;
        let d = &st.dims;
        let np = py.import("numpy")?;
        let to_np = |vals: Vec<f32>, shape: Vec<usize>| -> PyResult<Bound<'py, PyAny>> {
            let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
            np.call_method1("frombuffer", (PyBytes::new(py, &bytes), "<f4"))?.call_method1("reshape", (shape,))?.call_method0("copy")
        };
        Ok((
            to_np(st.temporal_f32(), vec![st.layers, d.num_v_heads, d.head_k_dim, d.head_v_dim])?,
            to_np(st.conv_f32(), vec![st.layers, d.conv_dim(), d.conv_state_len()])?,
        ))
    }

    /// Overwrites one slot from canonical tensors (any of f32/bf16/f16; stored in the pool's dtypes).
    fn import_state(&self, py: Python<'_>, slot: u64, temporal: &Bound<'_, PyAny>, conv: &Bound<'_, PyAny>) -> PyResult<()> {
        guard(|| {
            let s = crate::slots::slot_from_py(slot)?;
            let (t, c) = (borrow("temporal", temporal, false)?, borrow("conv", conv, false)?);
            let cfg = self.config;
            let st = HostState::from_f32(cfg.layers, cfg.dims, cfg.state_dtype, cfg.conv_dtype, &t.to_f32()?, &c.to_f32()?).py_err()?;
            self.with(py, |_, p| p.as_dyn_mut().import(s, &st))
        })
    }

    /// One slot's state as exact bytes in canonical order and the pool's dtypes:
    /// `{"state_dtype", "conv_dtype", "temporal", "conv"}` (for migration between pools/backends).
    fn export_bytes<'py>(&self, py: Python<'py>, slot: u64) -> PyResult<Bound<'py, PyDict>> {
        let s = crate::slots::slot_from_py(slot)?;
        let st = guard(|| self.with(py, |_, p| p.as_dyn().export(s)))?;
        let d = PyDict::new(py);
        d.set_item("state_dtype", st.state_dtype.name())?;
        d.set_item("conv_dtype", st.conv_dtype.name())?;
        d.set_item("temporal", PyBytes::new(py, &st.temporal))?;
        d.set_item("conv", PyBytes::new(py, &st.conv))?;
        Ok(d)
    }

    /// Overwrites one slot from `export_bytes` output (converted when dtypes differ).
    fn import_bytes(&self, py: Python<'_>, slot: u64, state: &Bound<'_, PyDict>) -> PyResult<()> {
        guard(|| {
            let s = crate::slots::slot_from_py(slot)?;
            let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
                state.get_item(k)?.ok_or_else(|| raise("ShapeError", format!("state lacks `{k}`")))
            };
            let st = HostState {
                layers: self.config.layers,
                dims: self.config.dims,
                state_dtype: dtype_arg(&get("state_dtype")?.extract::<String>()?)?,
                conv_dtype: dtype_arg(&get("conv_dtype")?.extract::<String>()?)?,
                temporal: get("temporal")?.extract::<Vec<u8>>()?,
                conv: get("conv")?.extract::<Vec<u8>>()?,
            };
            self.with(py, |_, p| p.as_dyn_mut().import(s, &st))
        })
    }

    /// Per-layer descriptors of every buffer for transfer engines:
    /// dicts `{kind, layer, device, addr, bytes, bytes_per_slot}`; slot `s` of a layer lives at
    /// `addr + s * bytes_per_slot`.
    fn descriptors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let ds = self.with(py, |_, p| Ok(p.as_dyn().descriptors()))?;
        let out = PyList::empty(py);
        for d in ds {
            let x = PyDict::new(py);
            let kind = match d.kind {
                BufferKind::Conv => "conv",
                BufferKind::Temporal => "temporal",
                BufferKind::Scratch => "scratch",
                BufferKind::ConvWindows => "conv_windows",
            };
            x.set_item("kind", kind)?;
            x.set_item("layer", d.layer)?;
            x.set_item("device", d.device.to_string())?;
            x.set_item("addr", d.addr)?;
            x.set_item("bytes", d.bytes)?;
            x.set_item("bytes_per_slot", d.bytes_per_slot)?;
            out.append(x)?;
        }
        Ok(out)
    }

    /// A zero-copy view of one layer's buffer (host pools): an object with
    /// `__array_interface__`, so `numpy.asarray(pool.buffer("temporal", 0))` aliases the pool.
    /// Shapes: temporal `[slots+1, HV, K, V]` (k-major) or `[slots+1, HV, V, K]` (v-major),
    /// conv `[slots+1, conv_dim, W-1]`, scratch `[slots+1, D, HV, ...]`, conv_windows
    /// `[slots+1, D, conv_dim, W-1]`; in replay mode scratch holds the records
    /// `[slots+1, D, HV, K+V+2]` (f32: k, v, g, beta) and conv_windows the raw conv
    /// inputs `[slots+1, D, conv_dim]`. bf16 buffers appear as uint16 (raw bits).
    /// The view keeps the pool alive; writing through it while a kernel runs is a data race.
    fn buffer(slf: &Bound<'_, Self>, py: Python<'_>, kind: &str, layer: usize) -> PyResult<BufferView> {
        let me = slf.get();
        let ds = me.with(py, |_, p| Ok((p.as_dyn().descriptors(), p.as_dyn().device())))?;
        let (descs, device) = ds;
        if device != deltanet::Device::Host {
            return Err(raise("DeviceError", format!("buffer views are host-only; this pool is on {device} (use descriptors())")));
        }
        let want = match kind {
            "conv" => BufferKind::Conv,
            "temporal" => BufferKind::Temporal,
            "scratch" => BufferKind::Scratch,
            "conv_windows" => BufferKind::ConvWindows,
            _ => return Err(raise("ConfigError", format!("buffer kind `{kind}` (conv, temporal, scratch, conv_windows)"))),
        };
        let d = descs
            .iter()
            .find(|d| d.kind == want && d.layer == layer)
            .ok_or_else(|| raise("ShapeError", format!("no {kind} buffer for layer {layer} in this pool")))?;
        let c = &me.config;
        let dims = &c.dims;
        let state_tail = if me.backend.layout() == LayoutKind::KMajor {
            vec![dims.num_v_heads, dims.head_k_dim, dims.head_v_dim]
        } else {
            vec![dims.num_v_heads, dims.head_v_dim, dims.head_k_dim]
        };
        let conv_tail = vec![dims.conv_dim(), dims.conv_state_len()];
        let rows = c.slots + 1;
        let replay = c.spec_mode() == Some(SpecMode::Replay);
        let (mut shape, dtype) = match want {
            // replay records: k, v, g, beta per value head, f32
            BufferKind::Scratch if replay => (vec![dims.num_v_heads, c.replay_record_elems()], DType::F32),
            // replay windows: each draft's raw conv input
            BufferKind::ConvWindows if replay => (vec![dims.conv_dim()], c.conv_dtype),
            BufferKind::Temporal | BufferKind::Scratch => (state_tail, c.state_dtype),
            BufferKind::Conv | BufferKind::ConvWindows => (conv_tail, c.conv_dtype),
        };
        if matches!(want, BufferKind::Scratch | BufferKind::ConvWindows) {
            shape.insert(0, c.draft_tokens());
        }
        shape.insert(0, rows);
        Ok(BufferView { _pool: slf.clone().unbind(), addr: d.addr, shape, dtype })
    }

    /// Chunked prefill (or its continuation) of packed sequences, in place on `slots`;
    /// `snapshots` is a list of `(seq, position, slot)`: the state after `position` tokens of
    /// sequence `seq` is also written to `slot` (prefix caching).
    #[pyo3(signature = (layer, q, k, v, g, beta, o, *, cu_seqlens, slots, has_initial_state = None, snapshots = None,
        scale = None, use_qk_l2norm = true))]
    #[allow(clippy::too_many_arguments)]
    fn extend(
        &self,
        py: Python<'_>,
        layer: usize,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        g: &Bound<'_, PyAny>,
        beta: &Bound<'_, PyAny>,
        o: &Bound<'_, PyAny>,
        cu_seqlens: &Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
        has_initial_state: Option<&Bound<'_, PyAny>>,
        snapshots: Option<&Bound<'_, PyAny>>,
        scale: Option<f32>,
        use_qk_l2norm: bool,
    ) -> PyResult<()> {
        guard(|| {
            let t = Delta::new(q, k, v, g, beta, o)?;
            let (cu, s) = (usizes(cu_seqlens, "cu_seqlens")?, slots_arg(slots)?);
            let hi = Self::has_init(has_initial_state, s.len())?;
            let snaps = snapshots_arg(snapshots)?;
            let io = t.io(params(&self.config.dims, scale, use_qk_l2norm))?;
            self.with(py, |b, p| {
                let batch = Self::extend_batch(p, &cu, &s, &hi, &snaps)?;
                b.extend(p, layer, &batch, io)
            })
        })
    }

    /// One token per request (`T = len(slots)`), in place.
    #[pyo3(signature = (layer, q, k, v, g, beta, o, *, slots, scale = None, use_qk_l2norm = true))]
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &self,
        py: Python<'_>,
        layer: usize,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        g: &Bound<'_, PyAny>,
        beta: &Bound<'_, PyAny>,
        o: &Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
        scale: Option<f32>,
        use_qk_l2norm: bool,
    ) -> PyResult<()> {
        guard(|| {
            let t = Delta::new(q, k, v, g, beta, o)?;
            let s = slots_arg(slots)?;
            let io = t.io(params(&self.config.dims, scale, use_qk_l2norm))?;
            self.with(py, |b, p| {
                let batch = DecodeBatch::new(p.as_dyn(), &s)?;
                b.decode(p, layer, &batch, io)
            })
        })
    }

    /// Speculative verify of `D = draft_tokens` drafts per request (`T = N*D`, request-major):
    /// a chain, or a tree when `parents` (`[N*D]`, -1 = the slot's state) is given. Results go to
    /// the scratch; the main state is untouched until `commit`.
    #[pyo3(signature = (layer, q, k, v, g, beta, o, *, slots, parents = None, scale = None, use_qk_l2norm = true))]
    #[allow(clippy::too_many_arguments)]
    fn verify(
        &self,
        py: Python<'_>,
        layer: usize,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        g: &Bound<'_, PyAny>,
        beta: &Bound<'_, PyAny>,
        o: &Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
        parents: Option<&Bound<'_, PyAny>>,
        scale: Option<f32>,
        use_qk_l2norm: bool,
    ) -> PyResult<()> {
        guard(|| {
            let t = Delta::new(q, k, v, g, beta, o)?;
            let s = slots_arg(slots)?;
            let par = parents_arg(parents)?;
            let io = t.io(params(&self.config.dims, scale, use_qk_l2norm))?;
            self.with(py, |b, p| {
                let batch = Self::verify_batch(p, &s, par.as_deref())?;
                b.verify(p, layer, &batch, io)
            })
        })
    }

    /// Makes each request's accepted draft step (`accepted[i] < D`) its state (recurrent and
    /// conv), and also writes it to `snapshots[i]` when given (a slot or None per request).
    /// `accepted[i] = None` skips request `i` (nothing accepted): its slot and its verify stay
    /// as they are, and its snapshot entry must be None.
    #[pyo3(signature = (layer, slots, accepted, snapshots = None))]
    fn commit(
        &self,
        py: Python<'_>,
        layer: usize,
        slots: &Bound<'_, PyAny>,
        accepted: &Bound<'_, PyAny>,
        snapshots: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        guard(|| {
            let s = slots_arg(slots)?;
            let acc = accepted_arg(accepted)?;
            let snaps: Vec<Option<Slot>> = match snapshots.filter(|o| !o.is_none()) {
                None => Vec::new(),
                Some(o) => o
                    .try_iter()?
                    .map(|x| {
                        let x = x?;
                        if x.is_none() {
                            Ok(None)
                        } else {
                            crate::slots::slot_from_py(x.extract()?).map(Some)
                        }
                    })
                    .collect::<PyResult<_>>()?,
            };
            self.with(py, |b, p| {
                let batch = CommitBatch::new(p.as_dyn(), &s, &acc, &snaps)?;
                b.visit(CommitVisit { pool: p, layer, batch: &batch })
            })
        })
    }

    /// Conv over packed sequences `x, out [T, conv_dim]`, from/to each slot's conv state.
    #[pyo3(signature = (layer, x, weight, bias, out, *, cu_seqlens, slots, has_initial_state = None, snapshots = None))]
    #[allow(clippy::too_many_arguments)]
    fn conv_extend(
        &self,
        py: Python<'_>,
        layer: usize,
        x: &Bound<'_, PyAny>,
        weight: &Bound<'_, PyAny>,
        bias: Option<&Bound<'_, PyAny>>,
        out: &Bound<'_, PyAny>,
        cu_seqlens: &Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
        has_initial_state: Option<&Bound<'_, PyAny>>,
        snapshots: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        guard(|| {
            let c = Conv::new(x, weight, bias, out)?;
            let (cu, s) = (usizes(cu_seqlens, "cu_seqlens")?, slots_arg(slots)?);
            let hi = Self::has_init(has_initial_state, s.len())?;
            let snaps = snapshots_arg(snapshots)?;
            let io = c.io()?;
            self.with(py, |b, p| {
                let batch = Self::extend_batch(p, &cu, &s, &hi, &snaps)?;
                b.conv_extend(p, layer, &batch, io)
            })
        })
    }

    /// Conv of one token per request, updating each slot's conv state.
    #[pyo3(signature = (layer, x, weight, bias, out, *, slots))]
    #[allow(clippy::too_many_arguments)]
    fn conv_update(
        &self,
        py: Python<'_>,
        layer: usize,
        x: &Bound<'_, PyAny>,
        weight: &Bound<'_, PyAny>,
        bias: Option<&Bound<'_, PyAny>>,
        out: &Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guard(|| {
            let c = Conv::new(x, weight, bias, out)?;
            let s = slots_arg(slots)?;
            let io = c.io()?;
            self.with(py, |b, p| {
                let batch = DecodeBatch::new(p.as_dyn(), &s)?;
                b.conv_update(p, layer, &batch, io)
            })
        })
    }

    /// Conv of draft tokens (chain or tree), windows to the scratch; the conv state is untouched.
    #[pyo3(signature = (layer, x, weight, bias, out, *, slots, parents = None))]
    #[allow(clippy::too_many_arguments)]
    fn conv_verify(
        &self,
        py: Python<'_>,
        layer: usize,
        x: &Bound<'_, PyAny>,
        weight: &Bound<'_, PyAny>,
        bias: Option<&Bound<'_, PyAny>>,
        out: &Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
        parents: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        guard(|| {
            let c = Conv::new(x, weight, bias, out)?;
            let s = slots_arg(slots)?;
            let par = parents_arg(parents)?;
            let io = c.io()?;
            self.with(py, |b, p| {
                let batch = Self::verify_batch(p, &s, par.as_deref())?;
                b.conv_verify(p, layer, &batch, io)
            })
        })
    }

    /// The whole GDN layer core (conv -> gate -> delta rule) over one step:
    /// `mode` is `"extend"` (needs `cu_seqlens`, optional `has_initial_state`, `snapshots`),
    /// `"decode"`, or `"verify"` (optional `parents`). `mixed_qkv [T, conv_dim]`, `a, b [T, HV]`,
    /// weights `A_log, dt_bias [HV]`, `conv_weight [conv_dim, W]`, `conv_bias [conv_dim]` (f32),
    /// output `out [T, HV, V]`.
    #[pyo3(signature = (mode, layer, mixed_qkv, a, b, out, *, A_log, dt_bias, conv_weight, conv_bias = None, slots,
        cu_seqlens = None, has_initial_state = None, snapshots = None, parents = None, scale = None, use_qk_l2norm = true))]
    #[allow(clippy::too_many_arguments, non_snake_case)]
    fn forward(
        &self,
        py: Python<'_>,
        mode: &str,
        layer: usize,
        mixed_qkv: &Bound<'_, PyAny>,
        a: &Bound<'_, PyAny>,
        b: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        A_log: &Bound<'_, PyAny>,
        dt_bias: &Bound<'_, PyAny>,
        conv_weight: &Bound<'_, PyAny>,
        conv_bias: Option<&Bound<'_, PyAny>>,
        slots: &Bound<'_, PyAny>,
        cu_seqlens: Option<&Bound<'_, PyAny>>,
        has_initial_state: Option<&Bound<'_, PyAny>>,
        snapshots: Option<&Bound<'_, PyAny>>,
        parents: Option<&Bound<'_, PyAny>>,
        scale: Option<f32>,
        use_qk_l2norm: bool,
    ) -> PyResult<()> {
        guard(|| {
            let w = Weights {
                a_log: borrow("A_log", A_log, false)?,
                dt_bias: borrow("dt_bias", dt_bias, false)?,
                conv_weight: borrow("conv_weight", conv_weight, false)?,
                conv_bias: borrow_opt("conv_bias", conv_bias, false)?,
            };
            let (x, a, b) = (borrow("mixed_qkv", mixed_qkv, false)?, borrow("a", a, false)?, borrow("b", b, false)?);
            let o = borrow("out", out, true)?;
            let s = slots_arg(slots)?;
            let prm = params(&self.config.dims, scale, use_qk_l2norm);
            enum Args {
                Extend(Vec<usize>, Vec<bool>, Vec<Snapshot>),
                Decode,
                Verify(Option<Vec<i64>>),
            }
            let args = match mode {
                "extend" => {
                    let cu = cu_seqlens.ok_or_else(|| raise("ShapeError", "forward(\"extend\") needs cu_seqlens"))?;
                    Args::Extend(usizes(cu, "cu_seqlens")?, Self::has_init(has_initial_state, s.len())?, snapshots_arg(snapshots)?)
                }
                "decode" => Args::Decode,
                "verify" => Args::Verify(parents_arg(parents)?),
                _ => return Err(raise("ConfigError", format!("forward mode `{mode}` (extend, decode, verify)"))),
            };
            let (weights, input, outv) = (w.view(), LayerInput { mixed_qkv: x.view(), a: a.view(), b: b.view() }, whole_mut(&o)?);
            self.with(py, move |bk, p| match &args {
                Args::Extend(cu, hi, sn) => {
                    let batch = Self::extend_batch(p, cu, &s, hi, sn)?;
                    bk.forward_extend(p, layer, &batch, &weights, &input, prm, outv)
                }
                Args::Decode => {
                    let batch = DecodeBatch::new(p.as_dyn(), &s)?;
                    bk.forward_decode(p, layer, &batch, &weights, &input, prm, outv)
                }
                Args::Verify(par) => {
                    let batch = Self::verify_batch(p, &s, par.as_deref())?;
                    bk.forward_verify(p, layer, &batch, &weights, &input, prm, outv)
                }
            })
        })
    }

    fn __repr__(&self) -> String {
        let d = &self.config.dims;
        format!(
            "Pool(backend={:?}, layout={:?}, layers={}, slots={}, HK={}, HV={}, K={}, V={}, W={}, state={}, conv={}, draft={})",
            self.backend.name(),
            self.layout(),
            self.config.layers,
            self.config.slots,
            d.num_k_heads,
            d.num_v_heads,
            d.head_k_dim,
            d.head_v_dim,
            d.conv_width,
            self.config.state_dtype,
            self.config.conv_dtype,
            self.config.draft_tokens()
        )
    }
}

/// A zero-copy host view of one pool buffer (see `Pool.buffer`).
#[pyclass(module = "deltanet", frozen)]
pub struct BufferView {
    _pool: Py<PyPool>,
    addr: u64,
    shape: Vec<usize>,
    dtype: DType,
}

#[pymethods]
impl BufferView {
    /// numpy's array interface (version 3): the pool's memory, writable.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let typestr = match self.dtype {
            DType::F32 => "<f4",
            DType::F16 => "<f2",
            DType::BF16 => "<u2",
        };
        d.set_item("shape", pyo3::types::PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", typestr)?;
        d.set_item("data", (self.addr, false))?;
        d.set_item("version", 3)?;
        Ok(d)
    }
    /// The dtype of the buffer (`"bf16"` views show raw uint16 bits).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }
}

/// How many slots fit in `budget` bytes (slot 0 included in the cost).
#[pyfunction]
#[pyo3(signature = (budget, *, layers, num_k_heads, num_v_heads, head_k_dim, head_v_dim, conv_width = 4,
    state_dtype = "f32", conv_dtype = "f32", draft_tokens = 0, spec_mode = "scratch"))]
#[allow(clippy::too_many_arguments)]
pub fn slots_for_budget(
    budget: usize,
    layers: usize,
    num_k_heads: usize,
    num_v_heads: usize,
    head_k_dim: usize,
    head_v_dim: usize,
    conv_width: usize,
    state_dtype: &str,
    conv_dtype: &str,
    draft_tokens: usize,
    spec_mode: &str,
) -> PyResult<usize> {
    let dims = ModelDims::new(num_k_heads, num_v_heads, head_k_dim, head_v_dim, conv_width).py_err()?;
    let c = PoolConfig::new(layers, 1, dims).with_state_dtype(dtype_arg(state_dtype)?).with_conv_dtype(dtype_arg(conv_dtype)?);
    Ok(with_spec(c, draft_tokens, spec_mode)?.slots_for_budget(budget))
}

/// Registers the pool classes.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBackend>()?;
    m.add_class::<PyPool>()?;
    m.add_class::<BufferView>()?;
    m.add_function(wrap_pyfunction!(slots_for_budget, m)?)?;
    Ok(())
}
