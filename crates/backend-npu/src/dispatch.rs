//! [`NpuDispatcher`]: the dispatcher contract on Ascend through the aclnn
//! GDN operators.
//!
//! | operation | operators |
//! |---|---|
//! | gate | `aclnnCast`, `aclnnAdd`, `aclnnSoftplus`, `aclnnExp`, `aclnnMul`, `aclnnNeg`, `aclnnSigmoid` |
//! | q/k L2 norm | `aclnnCast`, `aclnnMul`, `aclnnReduceSum`, `aclnnAdds`, `aclnnRsqrt`, `aclnnMul`, `aclnnCast` |
//! | extend | `aclnnChunkGatedDeltaRule`, split at snapshot positions; states gathered/scattered by D2D copies |
//! | decode | `aclnnRecurrentGatedDeltaRule`, in place on the pool (`ssmStateIndices` = slots) |
//! | verify | `aclnnRecurrentGatedDeltaRule` on the scratch (one call for chains, one per chain segment for trees) |
//! | conv | `aclnnCausalConv1dFn` (extend, verify), `aclnnCausalConv1dUpdate` (decode) |
//! | commit, snapshots | D2D copies on the stream |
//!
//! Every operation validates its tensors and batch before issuing anything,
//! so bad input leaves the pool unchanged. Each operation drains the stream
//! before returning (its temporaries are freed on return).

use crate::api::{AclDType, DevPtr, OpCall, TensorDesc, UnaryOp};
use crate::memory::NpuMemory;
use crate::result::BACKEND;
use crate::safe::{DeviceBuffer, NpuContext};
use deltanet_core::{
    Capabilities, Checked, CommitBatch, ConvIo, ConvLayoutKind, DType, DecodeBatch, DeltaIo, Device, DimLimits, Error, ExtendBatch,
    GateCall, HeadMapping, Kernels, LayoutKind, PoolOf, Result, Slot, TensorMeta, VMajor, VerifyBatch, L2NORM_EPS,
};
use std::ffi::CStr;
use std::sync::Arc;

/// Largest tokens per sequence of `aclnnRecurrentGatedDeltaRule` (`0 < L_i <= 8`).
pub const MAX_RECURRENT_TOKENS: usize = 8;
/// Largest `Nk`, `Nv` of `aclnnChunkGatedDeltaRule` (`<= 64`; the recurrent operator allows 256).
pub const MAX_HEADS: usize = 64;
/// Largest `Dk`, `Dv` of `aclnnChunkGatedDeltaRule` (`<= 128`; the recurrent operator allows 512).
pub const MAX_HEAD_DIM: usize = 128;
/// Conv `dim` range of the CausalConv1d operators.
pub const CONV_DIM_RANGE: (usize, usize) = (64, 16384);
/// Conv widths the CausalConv1d operators support.
pub const CONV_WIDTHS: [usize; 3] = [2, 3, 4];

const SILU: &CStr = c"silu";

/// The Ascend generation, from `aclrtGetSocName`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocFamily {
    /// Atlas A2 (`Ascend910B*`).
    A2,
    /// Atlas A3 (`Ascend910_93*`).
    A3,
    /// Ascend 950PR / 950DT (`Ascend950*`).
    Ascend950,
    /// Anything else (310P, 910A, ...): the GDN operators are not documented for it.
    Other(String),
}

impl SocFamily {
    /// Classifies a SoC name. The A2/A3 names are the runtime's (`Ascend910B1`..`B4`,
    /// `Ascend910_9391`...); the 950 prefix is assumed (`Ascend950`), not confirmed.
    pub fn from_soc_name(name: &str) -> Self {
        if name.starts_with("Ascend910B") {
            SocFamily::A2
        } else if name.starts_with("Ascend910_93") {
            SocFamily::A3
        } else if name.starts_with("Ascend950") {
            SocFamily::Ascend950
        } else {
            SocFamily::Other(name.to_string())
        }
    }

    /// The capabilities the aclnn GDN operators document for this generation:
    /// bf16 q/k/v/beta/out (`aclnnChunkGatedDeltaRule`, `aclnnRecurrentGatedDeltaRule`);
    /// state bf16, plus f32 only on 950 (the chunk operator's "float32 only on
    /// Ascend 950" limit binds, the recurrent one takes both); at most 8 draft tokens;
    /// head dims <= 128; conv state channels-last `[stateLen, dim]` in the input dtype.
    pub fn capabilities(&self, device: usize) -> Capabilities {
        let state_dtypes = match self {
            SocFamily::A2 | SocFamily::A3 => vec![DType::BF16],
            SocFamily::Ascend950 => vec![DType::BF16, DType::F32],
            SocFamily::Other(_) => vec![],
        };
        Capabilities::new(BACKEND, Device::Npu(device), LayoutKind::VMajor)
            .with_conv_layout(ConvLayoutKind::ChannelsLast)
            .with_state_dtypes(&state_dtypes)
            .with_conv_dtypes(&[DType::BF16])
            .with_input_dtypes(&[DType::BF16])
            .with_max_draft_tokens(MAX_RECURRENT_TOKENS)
            .with_limits(dim_limits())
            .with_chunk_size(64)
    }

    /// Whether `aclnnCausalConv1dFn` / `aclnnCausalConv1dUpdate` are documented for it
    /// (the ops-transformer docs mark them for Ascend 950 only).
    pub fn has_conv_ops(&self) -> bool {
        matches!(self, SocFamily::Ascend950)
    }
}

/// Model-dimension limits of the operators: heads and head dims of
/// `aclnnChunkGatedDeltaRule`, the grouped head mapping (`h / (HV/HK)`) of
/// the GDN operators, and the CausalConv1d operators' widths and channel
/// range (`64 <= dim <= 16384`, `dim * 2` bytes a multiple of 32).
pub fn dim_limits() -> DimLimits {
    DimLimits {
        max_heads: Some(MAX_HEADS),
        max_head_dim: Some(MAX_HEAD_DIM),
        conv_widths: Some(CONV_WIDTHS.to_vec()),
        conv_dim_range: Some(CONV_DIM_RANGE),
        conv_dim_multiple: 16,
        head_mappings: Some(vec![HeadMapping::Grouped]),
    }
}

/// The Ascend NPU backend. Native layout V-major (`[HV, V, K]`), the layout of the aclnn GDN operators.
pub struct NpuDispatcher {
    memory: NpuMemory,
    caps: Capabilities,
    soc: SocFamily,
}

impl std::fmt::Debug for NpuDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpuDispatcher").field("soc", &self.soc).field("caps", &self.caps).finish()
    }
}

/// A strided view (address, dtype, dims, element strides) of an operation's tensor.
#[derive(Debug, Clone)]
struct View {
    addr: DevPtr,
    dtype: AclDType,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl View {
    fn of(addr: DevPtr, m: &TensorMeta) -> Self {
        View { addr, dtype: m.dtype().into(), shape: m.shape().to_vec(), strides: m.strides().to_vec() }
    }
    fn contiguous(buf: &DeviceBuffer, dtype: AclDType, shape: &[usize]) -> Self {
        let d = TensorDesc::contiguous(buf.ptr(), dtype, shape);
        View { addr: buf.ptr(), dtype, shape: shape.to_vec(), strides: d.strides.iter().map(|&s| s as usize).collect() }
    }
    fn desc(&self) -> TensorDesc {
        TensorDesc::strided(self.addr, self.dtype, &self.shape, &self.strides)
    }
    /// Rows `t0..t0+n` of the leading dim.
    fn rows(&self, t0: usize, n: usize) -> View {
        let mut v = self.clone();
        v.addr += (t0 * self.strides[0] * self.dtype.size()) as u64;
        v.shape[0] = n;
        v
    }
    /// Address of row `t` (leading dim).
    fn row_addr(&self, t: usize) -> DevPtr {
        self.addr + (t * self.strides[0] * self.dtype.size()) as u64
    }
}

/// A token range of one sequence handed to one chunk-operator call.
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    start: usize,
    end: usize,
    slot: Slot,
    /// Start from the slot's state (else zeros).
    from_slot: bool,
    /// Slots that receive a copy of the final state.
    snapshots: Vec<Slot>,
}

/// Splits an extend into chunk-operator calls: sequences without snapshots
/// share one call; a sequence with snapshots is cut at every snapshot
/// position (the operator only returns the final state) and each piece is
/// its own call, continuing from the previous piece's state in the slot.
fn extend_plan(batch: &ExtendBatch) -> Vec<Vec<Piece>> {
    let mut calls: Vec<Vec<Piece>> = Vec::new();
    let mut group: Vec<Piece> = Vec::new();
    for i in 0..batch.num_seqs() {
        let r = batch.seq_range(i);
        let slot = batch.slots()[i];
        let mut cuts: Vec<usize> = batch.snapshots_of(i).map(|s| s.position).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&p| p > 0 && p < r.len()));
        bounds.push(r.len());
        let pieces: Vec<Piece> = bounds
            .windows(2)
            .enumerate()
            .map(|(j, w)| Piece {
                start: r.start + w[0],
                end: r.start + w[1],
                slot,
                from_slot: j > 0 || batch.has_initial_state()[i],
                snapshots: batch.snapshots_of(i).filter(|s| s.position == w[1]).map(|s| s.slot).collect(),
            })
            .collect();
        if cuts.is_empty() {
            group.extend(pieces);
        } else {
            if !group.is_empty() {
                calls.push(std::mem::take(&mut group));
            }
            calls.extend(pieces.into_iter().map(|p| vec![p]));
        }
    }
    if !group.is_empty() {
        calls.push(group);
    }
    calls
}

/// Splits each request's draft steps into chain segments `[s, e)`: step `t`
/// continues the segment when its parent is `t-1`; otherwise it starts a new
/// one whose initial state is its parent's (or the slot's, for a root).
pub fn chain_segments(parents: &[i64]) -> Vec<(usize, usize, Option<usize>)> {
    let mut out: Vec<(usize, usize, Option<usize>)> = Vec::new();
    for (t, &p) in parents.iter().enumerate() {
        let cont = t > 0 && p == t as i64 - 1 && out.last().is_some_and(|l| l.1 == t);
        if cont {
            out.last_mut().expect("checked").1 = t + 1;
        } else {
            out.push((t, t + 1, if p < 0 { None } else { Some(p as usize) }));
        }
    }
    out
}

/// Tokens on the path from the root to step `t` (inclusive), root first.
fn path_to(parents: &[i64], t: usize) -> Vec<usize> {
    let mut path = vec![t];
    let mut cur = parents[t];
    while cur >= 0 {
        path.push(cur as usize);
        cur = parents[cur as usize];
    }
    path.reverse();
    path
}

impl NpuDispatcher {
    /// Loads CANN, opens device `device` and reads its SoC. Without CANN
    /// (or without a device) this returns [`Error::Unavailable`] naming the
    /// library that could not be loaded and where it was searched.
    pub fn new(device: usize) -> Result<Self> {
        let api = crate::api::Cann::load()?;
        Self::with_api(Arc::new(api), device).map_err(|e| match e {
            Error::Device { op, message, .. } => Error::Unavailable { backend: BACKEND.into(), reason: format!("{op}: {message}") },
            other => other,
        })
    }

    /// A dispatcher over any implementation of the function table (the real
    /// [`Cann`](crate::api::Cann) loader, or a stand-in).
    pub fn with_api(api: Arc<dyn crate::api::AclApi>, device: usize) -> Result<Self> {
        let ctx = Arc::new(NpuContext::new(api, device)?);
        let soc = SocFamily::from_soc_name(ctx.soc());
        if let SocFamily::Other(name) = &soc {
            return Err(Error::Unsupported {
                backend: BACKEND.into(),
                reason: format!("SoC {name:?}: the aclnn GDN operators are documented for Atlas A2/A3 and Ascend 950 only"),
            });
        }
        let caps = soc.capabilities(device);
        Ok(NpuDispatcher { memory: NpuMemory::new(ctx), caps, soc })
    }

    /// The SoC generation.
    pub fn soc(&self) -> &SocFamily {
        &self.soc
    }

    fn ctx(&self) -> &NpuContext {
        self.memory.context()
    }

    fn conv_ops_available(&self) -> Result<()> {
        if self.soc.has_conv_ops() {
            Ok(())
        } else {
            Err(Error::Unsupported {
                backend: BACKEND.into(),
                reason: format!("aclnnCausalConv1dFn/Update are documented for Ascend 950 only, this device is {:?}", self.soc),
            })
        }
    }

    /// A contiguous temporary.
    fn temp(&self, dtype: AclDType, shape: &[usize]) -> Result<(DeviceBuffer, View)> {
        let buf = self.ctx().alloc(shape.iter().product::<usize>() * dtype.size())?;
        let v = View::contiguous(&buf, dtype, shape);
        Ok((buf, v))
    }

    fn cast(&self, input: &View, out: &View) -> Result<()> {
        let ctx = self.ctx();
        let (i, o) = (ctx.tensor(&input.desc())?, ctx.tensor(&out.desc())?);
        Ok(ctx.run(&OpCall::Cast { input: i.h(), dtype: out.dtype, out: o.h() })?)
    }

    fn unary(&self, op: UnaryOp, input: &View, out: &View) -> Result<()> {
        let ctx = self.ctx();
        let (i, o) = (ctx.tensor(&input.desc())?, ctx.tensor(&out.desc())?);
        Ok(ctx.run(&OpCall::Unary { op, input: i.h(), out: o.h() })?)
    }

    fn mul(&self, a: &View, b: &View, out: &View) -> Result<()> {
        let ctx = self.ctx();
        let (ta, tb, to) = (ctx.tensor(&a.desc())?, ctx.tensor(&b.desc())?, ctx.tensor(&out.desc())?);
        Ok(ctx.run(&OpCall::Mul { a: ta.h(), b: tb.h(), out: to.h() })?)
    }

    /// `x / sqrt(sum(x^2) + 1e-6)` over the last dim, in f32, written as bf16 `[T, H, K]`.
    fn l2norm(&self, x: &View) -> Result<(DeviceBuffer, View)> {
        let ctx = self.ctx();
        let (t, h, k) = (x.shape[0], x.shape[1], x.shape[2]);
        let (_xf_buf, xf) = self.temp(AclDType::F32, &[t, h, k])?;
        let (_sq_buf, sq) = self.temp(AclDType::F32, &[t, h, k])?;
        let (_ss_buf, ss) = self.temp(AclDType::F32, &[t, h, 1])?;
        let (_rs_buf, rs) = self.temp(AclDType::F32, &[t, h, 1])?;
        let (out_buf, out) = self.temp(AclDType::BF16, &[t, h, k])?;
        self.cast(x, &xf)?;
        self.mul(&xf, &xf, &sq)?;
        {
            let (ti, to) = (ctx.tensor(&sq.desc())?, ctx.tensor(&ss.desc())?);
            let dims = ctx.int_array(&[2])?;
            ctx.run(&OpCall::ReduceSum { input: ti.h(), dims: dims.h(), keep_dim: true, dtype: AclDType::F32, out: to.h() })?;
        }
        {
            let (ti, to) = (ctx.tensor(&ss.desc())?, ctx.tensor(&rs.desc())?);
            let (eps, one) = (ctx.scalar(L2NORM_EPS)?, ctx.scalar(1.0)?);
            ctx.run(&OpCall::Adds { input: ti.h(), other: eps.h(), alpha: one.h(), out: to.h() })?;
        }
        self.unary(UnaryOp::Rsqrt, &rs, &ss)?;
        self.mul(&xf, &ss, &sq)?;
        self.cast(&sq, &out)?;
        Ok((out_buf, out))
    }

    /// q, k (L2-normalised when asked) and beta as bf16, plus the buffers that back them.
    fn delta_inputs(&self, io: &DeltaIo<'_>) -> Result<(Vec<DeviceBuffer>, View, View, View)> {
        let mut keep = Vec::new();
        let mut q = View::of(io.q.addr(), io.q.meta());
        let mut k = View::of(io.k.addr(), io.k.meta());
        if io.params.use_qk_l2norm {
            let (qb, qv) = self.l2norm(&q)?;
            let (kb, kv) = self.l2norm(&k)?;
            keep.push(qb);
            keep.push(kb);
            q = qv;
            k = kv;
        }
        let mut beta = View::of(io.beta.addr(), io.beta.meta());
        if beta.dtype != AclDType::BF16 {
            let (bb, bv) = self.temp(AclDType::BF16, &beta.shape)?;
            self.cast(&beta, &bv)?;
            keep.push(bb);
            beta = bv;
        }
        Ok((keep, q, k, beta))
    }

    /// One `aclnnRecurrentGatedDeltaRule` call over tokens `t0..t0+n` of `io`.
    #[allow(clippy::too_many_arguments)]
    fn recurrent(
        &self,
        io: &DeltaIo<'_>,
        q: &View,
        k: &View,
        beta: &View,
        state: &View,
        t0: usize,
        lens: &[i32],
        indices: &[i32],
        accepted: &[i32],
    ) -> Result<()> {
        let ctx = self.ctx();
        let n: usize = lens.iter().map(|&l| l as usize).sum();
        let v = View::of(io.v.addr(), io.v.meta());
        let g = View::of(io.g.addr(), io.g.meta());
        let o = View::of(io.o.addr(), io.o.meta());
        let (lens_b, idx_b, acc_b) = (ctx.upload_i32(lens)?, ctx.upload_i32(indices)?, ctx.upload_i32(accepted)?);
        let tq = ctx.tensor(&q.rows(t0, n).desc())?;
        let tk = ctx.tensor(&k.rows(t0, n).desc())?;
        let tv = ctx.tensor(&v.rows(t0, n).desc())?;
        let tb = ctx.tensor(&beta.rows(t0, n).desc())?;
        let tg = ctx.tensor(&g.rows(t0, n).desc())?;
        let to = ctx.tensor(&o.rows(t0, n).desc())?;
        let ts = ctx.tensor(&state.desc())?;
        let tl = ctx.tensor_of(&lens_b, AclDType::I32, &[lens.len()])?;
        let ti = ctx.tensor_of(&idx_b, AclDType::I32, &[indices.len()])?;
        let ta = ctx.tensor_of(&acc_b, AclDType::I32, &[accepted.len()])?;
        ctx.run(&OpCall::RecurrentGatedDeltaRule {
            query: tq.h(),
            key: tk.h(),
            value: tv.h(),
            beta: tb.h(),
            state: ts.h(),
            actual_seq_lengths: tl.h(),
            ssm_state_indices: ti.h(),
            g: Some(tg.h()),
            gk: None,
            num_accepted_tokens: ta.h(),
            scale: io.params.scale,
            out: to.h(),
        })?;
        Ok(())
    }

    /// The conv weight `[C, W]` f32 as the operators' `[W, C]` in the input dtype, and the bias likewise.
    fn conv_weights(&self, io: &ConvIo<'_>, dtype: AclDType) -> Result<(Vec<DeviceBuffer>, View, Option<View>)> {
        let (c, w) = (io.weight.meta().shape()[0], io.weight.meta().shape()[1]);
        let ws = io.weight.meta().strides();
        let src = View { addr: io.weight.addr(), dtype: AclDType::F32, shape: vec![w, c], strides: vec![ws[1], ws[0]] };
        let (wb, wv) = self.temp(dtype, &[w, c])?;
        self.cast(&src, &wv)?;
        let mut keep = vec![wb];
        let bias = match &io.bias {
            Some(b) => {
                let (bb, bv) = self.temp(dtype, &[c])?;
                self.cast(&View::of(b.addr(), b.meta()), &bv)?;
                keep.push(bb);
                Some(bv)
            }
            None => None,
        };
        Ok((keep, wv, bias))
    }

    /// Writes a conv window (`W-1` rows of `C` channels, channels-last) at `dst`
    /// from its sources: `Ok(j)` row `j` of the state at `init` (zeros when
    /// `init` is `None`), `Err(u)` row `u` of `x`.
    fn write_window(
        &self,
        dst: DevPtr,
        rows: &[std::result::Result<usize, usize>],
        init: Option<DevPtr>,
        x: &View,
        row_bytes: usize,
    ) -> Result<()> {
        let ctx = self.ctx();
        for (r, src) in rows.iter().enumerate() {
            let d = dst + (r * row_bytes) as u64;
            match (*src, init) {
                (Ok(j), Some(base)) => ctx.copy(d, base + (j * row_bytes) as u64, row_bytes)?,
                (Ok(_), None) => ctx.zero(d, row_bytes)?,
                (Err(u), _) => ctx.copy(d, x.row_addr(u), row_bytes)?,
            }
        }
        Ok(())
    }
}

/// The last `w1` entries of `[state rows 0..w1] ++ tokens`, as window sources.
fn window_sources(w1: usize, tokens: &[usize]) -> Vec<std::result::Result<usize, usize>> {
    let mut all: Vec<std::result::Result<usize, usize>> = (0..w1).map(Ok).collect();
    all.extend(tokens.iter().map(|&u| Err(u)));
    all.split_off(all.len() - w1)
}

impl Kernels for NpuDispatcher {
    type Layout = VMajor;
    type Memory = NpuMemory;

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn memory(&self) -> &NpuMemory {
        &self.memory
    }

    fn run_gate(&self, call: GateCall<'_>) -> Result<()> {
        let (t, hv, io) = (call.tokens(), call.dims().num_v_heads, call.io());
        let ctx = self.ctx();
        let a = View::of(io.a.addr(), io.a.meta());
        let b = View::of(io.b.addr(), io.b.meta());
        let a_log = View::of(io.a_log.addr(), io.a_log.meta());
        let dt_bias = View::of(io.dt_bias.addr(), io.dt_bias.meta());
        let g = View::of(io.g.addr(), io.g.meta());
        let beta = View::of(io.beta.addr(), io.beta.meta());
        let (_af_b, af) = self.temp(AclDType::F32, &[t, hv])?;
        let (_sp_b, sp) = self.temp(AclDType::F32, &[t, hv])?;
        let (_ea_b, ea) = self.temp(AclDType::F32, &[hv])?;
        // g = -exp(A_log) * softplus(a + dt_bias), in f32.
        self.cast(&a, &af)?;
        {
            let (ta, tb, to) = (ctx.tensor(&af.desc())?, ctx.tensor(&dt_bias.desc())?, ctx.tensor(&sp.desc())?);
            let one = ctx.scalar(1.0)?;
            ctx.run(&OpCall::Add { a: ta.h(), b: tb.h(), alpha: one.h(), out: to.h() })?;
        }
        {
            let (ti, to) = (ctx.tensor(&sp.desc())?, ctx.tensor(&af.desc())?);
            let (one, twenty) = (ctx.scalar(1.0)?, ctx.scalar(20.0)?);
            ctx.run(&OpCall::Softplus { input: ti.h(), beta: one.h(), threshold: twenty.h(), out: to.h() })?;
        }
        self.unary(UnaryOp::Exp, &a_log, &ea)?;
        self.mul(&af, &ea, &sp)?;
        self.unary(UnaryOp::Neg, &sp, &g)?;
        // beta = sigmoid(b), in f32.
        self.cast(&b, &af)?;
        self.unary(UnaryOp::Sigmoid, &af, &beta)?;
        Ok(ctx.synchronize()?)
    }

    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        self.conv_ops_available()?;
        let ctx = self.ctx();
        let (c, w1) = (dims.conv_dim(), dims.conv_state_len());
        let dt: AclDType = geo.config.conv_dtype.into();
        let row_bytes = c * dt.size();
        let x = View::of(io.x.addr(), io.x.meta());
        let y = View::of(io.out.addr(), io.out.meta());
        let (_keep, wv, bias) = self.conv_weights(&io, dt)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.conv.ptr() + geo.conv_offset(layer, 0) as u64;
            // Snapshot windows first: they read the slot's state before the operator overwrites it.
            for s in batch.snapshots() {
                let r = batch.seq_range(s.seq);
                let tokens: Vec<usize> = (r.start..r.start + s.position).collect();
                let init = batch.has_initial_state()[s.seq].then(|| base + geo.conv_offset(0, batch.slots()[s.seq].index()) as u64);
                self.write_window(base + geo.conv_offset(0, s.slot.index()) as u64, &window_sources(w1, &tokens), init, &x, row_bytes)?;
            }
            let qsl: Vec<i32> = batch.cu_seqlens().iter().map(|&v| v as i32).collect();
            let idx: Vec<i32> = batch.slots().iter().map(|s| s.index() as i32).collect();
            let mode: Vec<i32> = batch.has_initial_state().iter().map(|&h| h as i32).collect();
            let (qsl_b, idx_b, mode_b) = (ctx.upload_i32(&qsl)?, ctx.upload_i32(&idx)?, ctx.upload_i32(&mode)?);
            let states = TensorDesc::contiguous(base, dt, &[geo.rows(), w1, c]);
            let (tx, tw, ts, ty) = (ctx.tensor(&x.desc())?, ctx.tensor(&wv.desc())?, ctx.tensor(&states)?, ctx.tensor(&y.desc())?);
            let tb = bias.as_ref().map(|b| ctx.tensor(&b.desc())).transpose()?;
            let tq = ctx.tensor_of(&qsl_b, AclDType::I32, &[qsl.len()])?;
            let ti = ctx.tensor_of(&idx_b, AclDType::I32, &[idx.len()])?;
            let tm = ctx.tensor_of(&mode_b, AclDType::I32, &[mode.len()])?;
            ctx.run(&OpCall::CausalConv1dFn {
                x: tx.h(),
                weight: tw.h(),
                conv_states: ts.h(),
                bias: tb.as_ref().map(|t| t.h()),
                query_start_loc: Some(tq.h()),
                cache_indices: Some(ti.h()),
                initial_state_mode: Some(tm.h()),
                activation: SILU,
                null_block_id: -1,
                block_size_to_align: 0,
                y: ty.h(),
            })?;
            Ok(ctx.synchronize()?)
        })
    }

    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        self.conv_ops_available()?;
        let ctx = self.ctx();
        let (n, c, w1) = (batch.num_seqs(), dims.conv_dim(), dims.conv_state_len());
        let dt: AclDType = geo.config.conv_dtype.into();
        let (xs, ys) = (io.x.meta().strides()[0], io.out.meta().strides()[0]);
        let x = View { addr: io.x.addr(), dtype: io.x.meta().dtype().into(), shape: vec![n, 1, c], strides: vec![xs, c, 1] };
        let y = View { addr: io.out.addr(), dtype: io.out.meta().dtype().into(), shape: vec![n, 1, c], strides: vec![ys, c, 1] };
        let (_keep, wv, bias) = self.conv_weights(&io, dt)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.conv.ptr() + geo.conv_offset(layer, 0) as u64;
            let idx: Vec<i32> = batch.slots().iter().map(|s| s.index() as i32).collect();
            let idx_b = ctx.upload_i32(&idx)?;
            let states = TensorDesc::contiguous(base, dt, &[geo.rows(), w1, c]);
            let (tx, tw, ts, ty) = (ctx.tensor(&x.desc())?, ctx.tensor(&wv.desc())?, ctx.tensor(&states)?, ctx.tensor(&y.desc())?);
            let tb = bias.as_ref().map(|b| ctx.tensor(&b.desc())).transpose()?;
            let ti = ctx.tensor_of(&idx_b, AclDType::I32, &[n])?;
            ctx.run(&OpCall::CausalConv1dUpdate {
                x: tx.h(),
                weight: tw.h(),
                conv_states: ts.h(),
                bias: tb.as_ref().map(|t| t.h()),
                query_start_loc: None,
                cache_indices: Some(ti.h()),
                num_accepted_tokens: None,
                activation: SILU,
                null_block_id: -1,
                max_query_len: -1,
                y: ty.h(),
            })?;
            Ok(ctx.synchronize()?)
        })
    }

    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        self.conv_ops_available()?;
        let ctx = self.ctx();
        let (c, w1, d) = (dims.conv_dim(), dims.conv_state_len(), batch.draft());
        let dt: AclDType = geo.config.conv_dtype.into();
        let row_bytes = c * dt.size();
        let x = View::of(io.x.addr(), io.x.meta());
        let y = View::of(io.out.addr(), io.out.meta());
        let (_keep, wv, bias) = self.conv_weights(&io, dt)?;
        pool.checked_parts(ticket, |parts| {
            let conv_base = parts.conv.ptr() + geo.conv_offset(layer, 0) as u64;
            let win = parts.windows.ok_or(Error::NoSpeculativeBuffers)?;
            let win_base = win.ptr() + geo.window_offset(layer, 0, 0) as u64;
            let win_addr = |slot: Slot, t: usize| win_base + ((slot.index() * d + t) * w1 * row_bytes) as u64;
            let mut qsl = vec![0i32];
            let mut idx = Vec::new();
            for (i, &slot) in batch.slots().iter().enumerate() {
                let parents = &batch.parents()[i * d..(i + 1) * d];
                let init = Some(conv_base + geo.conv_offset(0, slot.index()) as u64);
                let global = |path: Vec<usize>| path.into_iter().map(|u| i * d + u).collect::<Vec<_>>();
                for (s, e, parent) in chain_segments(parents) {
                    // Windows of the segment's inner steps, built from their sources.
                    for t in s..e - 1 {
                        self.write_window(win_addr(slot, t), &window_sources(w1, &global(path_to(parents, t))), init, &x, row_bytes)?;
                    }
                    // The operator's initial state (the parent's window) goes in the row it
                    // leaves the segment's final window in.
                    let start = parent.map_or_else(Vec::new, |p| global(path_to(parents, p)));
                    self.write_window(win_addr(slot, e - 1), &window_sources(w1, &start), init, &x, row_bytes)?;
                    qsl.push((i * d + e) as i32);
                    idx.push((slot.index() * d + e - 1) as i32);
                }
            }
            let mode = vec![1i32; idx.len()];
            let (qsl_b, idx_b, mode_b) = (ctx.upload_i32(&qsl)?, ctx.upload_i32(&idx)?, ctx.upload_i32(&mode)?);
            let states = TensorDesc::contiguous(win_base, dt, &[geo.rows() * d, w1, c]);
            let (tx, tw, ts, ty) = (ctx.tensor(&x.desc())?, ctx.tensor(&wv.desc())?, ctx.tensor(&states)?, ctx.tensor(&y.desc())?);
            let tb = bias.as_ref().map(|b| ctx.tensor(&b.desc())).transpose()?;
            let tq = ctx.tensor_of(&qsl_b, AclDType::I32, &[qsl.len()])?;
            let ti = ctx.tensor_of(&idx_b, AclDType::I32, &[idx.len()])?;
            let tm = ctx.tensor_of(&mode_b, AclDType::I32, &[mode.len()])?;
            ctx.run(&OpCall::CausalConv1dFn {
                x: tx.h(),
                weight: tw.h(),
                conv_states: ts.h(),
                bias: tb.as_ref().map(|t| t.h()),
                query_start_loc: Some(tq.h()),
                cache_indices: Some(ti.h()),
                initial_state_mode: Some(tm.h()),
                activation: SILU,
                null_block_id: -1,
                block_size_to_align: 0,
                y: ty.h(),
            })?;
            Ok(ctx.synchronize()?)
        })
    }

    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let ctx = self.ctx();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let sdt: AclDType = geo.config.state_dtype.into();
        let sb = geo.state_bytes();
        let (_keep, q, kk, beta) = self.delta_inputs(&io)?;
        let vv = View::of(io.v.addr(), io.v.meta());
        let g = View::of(io.g.addr(), io.g.meta());
        let o = View::of(io.o.addr(), io.o.meta());
        pool.checked_parts(ticket, |parts| {
            let base = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let slot_addr = |s: Slot| base + (s.index() * sb) as u64;
            for pieces in extend_plan(batch) {
                let nb = pieces.len();
                let (t0, t1) = (pieces[0].start, pieces[nb - 1].end);
                let (_in_b, s_in) = self.temp(sdt, &[nb, hv, v, k])?;
                let (_out_b, s_out) = self.temp(sdt, &[nb, hv, v, k])?;
                for (j, p) in pieces.iter().enumerate() {
                    let dst = s_in.addr + (j * sb) as u64;
                    if p.from_slot {
                        ctx.copy(dst, slot_addr(p.slot), sb)?;
                    } else {
                        ctx.zero(dst, sb)?;
                    }
                }
                let lens: Vec<i32> = pieces.iter().map(|p| (p.end - p.start) as i32).collect();
                let lens_b = ctx.upload_i32(&lens)?;
                let n = t1 - t0;
                let tq = ctx.tensor(&q.rows(t0, n).desc())?;
                let tk = ctx.tensor(&kk.rows(t0, n).desc())?;
                let tv = ctx.tensor(&vv.rows(t0, n).desc())?;
                let tb = ctx.tensor(&beta.rows(t0, n).desc())?;
                let tg = ctx.tensor(&g.rows(t0, n).desc())?;
                let to = ctx.tensor(&o.rows(t0, n).desc())?;
                let (ti, tf) = (ctx.tensor(&s_in.desc())?, ctx.tensor(&s_out.desc())?);
                let tl = ctx.tensor_of(&lens_b, AclDType::I32, &[nb])?;
                ctx.run(&OpCall::ChunkGatedDeltaRule {
                    query: tq.h(),
                    key: tk.h(),
                    value: tv.h(),
                    beta: tb.h(),
                    initial_state: ti.h(),
                    actual_seq_lengths: tl.h(),
                    g: Some(tg.h()),
                    scale: io.params.scale,
                    out: to.h(),
                    final_state: tf.h(),
                })?;
                for (j, p) in pieces.iter().enumerate() {
                    let src = s_out.addr + (j * sb) as u64;
                    ctx.copy(slot_addr(p.slot), src, sb)?;
                    for &snap in &p.snapshots {
                        ctx.copy(slot_addr(snap), src, sb)?;
                    }
                }
                // The temporaries of this call are freed at the end of the iteration.
                ctx.synchronize()?;
            }
            Ok(ctx.synchronize()?)
        })
    }

    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let n = batch.num_seqs();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let (_keep, q, kk, beta) = self.delta_inputs(&io)?;
        pool.checked_parts(ticket, |parts| {
            let base = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let state = View {
                addr: base,
                dtype: geo.config.state_dtype.into(),
                shape: vec![geo.rows(), hv, v, k],
                strides: vec![hv * v * k, v * k, k, 1],
            };
            let idx: Vec<i32> = batch.slots().iter().map(|s| s.index() as i32).collect();
            self.recurrent(&io, &q, &kk, &beta, &state, 0, &vec![1; n], &idx, &vec![1; n])?;
            Ok(self.ctx().synchronize()?)
        })
    }

    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch, geo, io) = (call.ticket(), call.layer(), call.batch(), *call.geometry(), call.io());
        let dims = geo.config.dims;
        let d = batch.draft();
        let ctx = self.ctx();
        let (hv, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        let sb = geo.state_bytes();
        let (_keep, q, kk, beta) = self.delta_inputs(&io)?;
        pool.checked_parts(ticket, |parts| {
            let main = parts.temporal.ptr() + geo.temporal_offset(layer, 0) as u64;
            let scratch = parts.scratch.ok_or(Error::NoSpeculativeBuffers)?;
            let sbase = scratch.ptr() + geo.scratch_offset(layer, 0, 0) as u64;
            let state = View {
                addr: sbase,
                dtype: geo.config.state_dtype.into(),
                shape: vec![geo.rows() * d, hv, v, k],
                strides: vec![hv * v * k, v * k, k, 1],
            };
            let row = |slot: Slot, t: usize| slot.index() * d + t;
            let addr = |r: usize| sbase + (r * sb) as u64;
            let segs: Vec<Vec<(usize, usize, Option<usize>)>> =
                (0..batch.num_seqs()).map(|i| chain_segments(&batch.parents()[i * d..(i + 1) * d])).collect();
            if segs.iter().all(|s| s.len() == 1) {
                // Chains: the slot's state goes to scratch step 0; the operator reads it there
                // (numAcceptedTokens = 1 → ssmStateIndices[start]) and writes step t's state to step t.
                let mut idx = Vec::with_capacity(batch.tokens());
                for &slot in batch.slots() {
                    ctx.copy(addr(row(slot, 0)), main + (slot.index() * sb) as u64, sb)?;
                    idx.extend((0..d).map(|t| row(slot, t) as i32));
                }
                let n = batch.num_seqs();
                self.recurrent(&io, &q, &kk, &beta, &state, 0, &vec![d as i32; n], &idx, &vec![1; n])?;
            } else {
                // Trees: one call per chain segment, in step order (a parent's segment runs first),
                // each starting from a copy of its parent's state.
                for (i, &slot) in batch.slots().iter().enumerate() {
                    for &(s, e, parent) in &segs[i] {
                        let src = parent.map_or(main + (slot.index() * sb) as u64, |p| addr(row(slot, p)));
                        ctx.copy(addr(row(slot, s)), src, sb)?;
                        let idx: Vec<i32> = (s..e).map(|t| row(slot, t) as i32).collect();
                        self.recurrent(&io, &q, &kk, &beta, &state, i * d + s, &[(e - s) as i32], &idx, &[1])?;
                    }
                }
            }
            Ok(ctx.synchronize()?)
        })
    }

    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        pool.commit_checked(&call)?;
        Ok(self.ctx().synchronize()?)
    }
}
