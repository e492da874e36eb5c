//! A deliberately plain host dispatcher (token-by-token f32 recurrence, no
//! chunking) with which deltanet-core's tests exercise the conformance suite
//! (the deltanet-conformance dev-dependency), plus switchable faults to show
//! the suite catches them.

#![allow(dead_code)]

use deltanet_core::*;
use half::{bf16, f16};
use std::marker::PhantomData;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Start from the slot's state even when `has_initial_state` is false.
    IgnoreInitFlag,
    /// Commit copies step `a - 1` (clamped) instead of `a`.
    CommitOffByOne,
    /// Read strided views as if contiguous.
    IgnoreStrides,
    /// Output depends on the position in the batch (adds 1e-3 * index to o).
    BatchDependent,
}

pub struct Naive<L: StateLayout> {
    caps: Capabilities,
    pub fault: Fault,
    _l: PhantomData<L>,
}

impl<L: StateLayout> Naive<L> {
    pub fn new() -> Self {
        Self::with_fault(Fault::None)
    }
    pub fn with_fault(fault: Fault) -> Self {
        let mut caps = Capabilities::host_reference(L::KIND);
        caps.backend = format!("naive-{}", L::KIND.name());
        Naive { caps, fault, _l: PhantomData }
    }
}

fn read(t: &TensorRef<'_>, ignore_strides: bool) -> Result<Vec<f32>> {
    let m = *t.meta();
    let shape = m.shape().to_vec();
    let n = m.numel();
    let strides: Vec<usize> = if ignore_strides {
        let mut s = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * shape[i + 1];
        }
        s
    } else {
        m.strides().to_vec()
    };
    let get = |f: &dyn Fn(usize) -> f32| -> Vec<f32> {
        (0..n)
            .map(|mut lin| {
                let mut off = 0;
                for d in (0..shape.len()).rev() {
                    off += (lin % shape[d]) * strides[d];
                    lin /= shape[d];
                }
                f(off)
            })
            .collect()
    };
    Ok(match m.dtype() {
        DType::F32 => {
            let s = t.host_slice::<f32>()?;
            get(&|o| s[o])
        }
        DType::BF16 => {
            let s = t.host_slice::<bf16>()?;
            get(&|o| s[o].to_f32())
        }
        DType::F16 => {
            let s = t.host_slice::<f16>()?;
            get(&|o| s[o].to_f32())
        }
    })
}

fn write(t: &mut TensorMut<'_>, vals: &[f32]) -> Result<()> {
    let m = *t.meta();
    let shape = m.shape().to_vec();
    let strides = m.strides().to_vec();
    let offs: Vec<usize> = (0..m.numel())
        .map(|mut lin| {
            let mut off = 0;
            for d in (0..shape.len()).rev() {
                off += (lin % shape[d]) * strides[d];
                lin /= shape[d];
            }
            off
        })
        .collect();
    match m.dtype() {
        DType::F32 => {
            let s = t.host_slice_mut::<f32>()?;
            offs.iter().zip(vals).for_each(|(&o, &v)| s[o] = v);
        }
        DType::BF16 => {
            let s = t.host_slice_mut::<bf16>()?;
            offs.iter().zip(vals).for_each(|(&o, &v)| s[o] = bf16::from_f32(v));
        }
        DType::F16 => {
            let s = t.host_slice_mut::<f16>()?;
            offs.iter().zip(vals).for_each(|(&o, &v)| s[o] = f16::from_f32(v));
        }
    }
    Ok(())
}

/// Canonical f32 state from pool bytes of layout `L`.
fn load<L: StateLayout>(g: &PoolGeometry, bytes: &[u8]) -> Vec<f32> {
    let d = &g.config.dims;
    let raw = g.config.state_dtype.decode_vec(bytes);
    let mut out = vec![0.0; raw.len()];
    convert_state(L::KIND, LayoutKind::KMajor, d.num_v_heads, d.head_k_dim, d.head_v_dim, &raw, &mut out).expect("validated sizes");
    out
}

fn store<L: StateLayout>(g: &PoolGeometry, st: &[f32], bytes: &mut [u8]) {
    let d = &g.config.dims;
    let mut raw = vec![0.0; st.len()];
    convert_state(LayoutKind::KMajor, L::KIND, d.num_v_heads, d.head_k_dim, d.head_v_dim, st, &mut raw).expect("validated sizes");
    g.config.state_dtype.encode(&raw, bytes);
}

struct Tok {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
}

fn l2(x: &[f32]) -> Vec<f32> {
    let n = (x.iter().map(|v| v * v).sum::<f32>() + L2NORM_EPS).sqrt();
    x.iter().map(|v| v / n).collect()
}

/// One token of the recurrence on canonical state `st` ([HV, K, V]); returns o [HV, V].
fn step(d: &ModelDims, p: &DeltaParams, st: &mut [f32], x: &Tok, t: usize) -> Vec<f32> {
    let (hk, hv, kd, vd) = (d.num_k_heads, d.num_v_heads, d.head_k_dim, d.head_v_dim);
    let mut o = vec![0.0; hv * vd];
    for h in 0..hv {
        let kh = d.key_head(h);
        let q = &x.q[(t * hk + kh) * kd..(t * hk + kh + 1) * kd];
        let k = &x.k[(t * hk + kh) * kd..(t * hk + kh + 1) * kd];
        let (q, k) = if p.use_qk_l2norm { (l2(q), l2(k)) } else { (q.to_vec(), k.to_vec()) };
        let v = &x.v[(t * hv + h) * vd..(t * hv + h + 1) * vd];
        let s = &mut st[h * kd * vd..(h + 1) * kd * vd];
        let decay = x.g[t * hv + h].exp();
        let beta = x.beta[t * hv + h];
        s.iter_mut().for_each(|e| *e *= decay);
        let mut u = vec![0.0f32; vd];
        for j in 0..vd {
            let mut sk = 0.0;
            for i in 0..kd {
                sk += s[i * vd + j] * k[i];
            }
            u[j] = beta * (v[j] - sk);
        }
        for i in 0..kd {
            for j in 0..vd {
                s[i * vd + j] += k[i] * u[j];
            }
        }
        for j in 0..vd {
            let mut acc = 0.0;
            for i in 0..kd {
                acc += s[i * vd + j] * q[i];
            }
            o[h * vd + j] = p.scale * acc;
        }
    }
    o
}

impl<L: StateLayout> Naive<L> {
    fn tokens(&self, io: &DeltaIo<'_>) -> Result<Tok> {
        let ig = self.fault == Fault::IgnoreStrides;
        Ok(Tok { q: read(&io.q, ig)?, k: read(&io.k, ig)?, v: read(&io.v, ig)?, g: read(&io.g, ig)?, beta: read(&io.beta, ig)? })
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_run(
        dims: &ModelDims,
        io: &ConvIo<'_>,
        window: &mut Vec<f32>,
        x: &[f32],
        t: usize,
        out: &mut [f32],
        w: &[f32],
        bias: &Option<Vec<f32>>,
    ) {
        // window: [conv_dim, W-1] channels-first
        let (c, wd) = (dims.conv_dim(), dims.conv_width);
        let w1 = wd - 1;
        let _ = io;
        let mut next = vec![0.0; c * w1];
        for ch in 0..c {
            let mut acc = bias.as_ref().map_or(0.0, |b| b[ch]);
            for j in 0..w1 {
                acc += w[ch * wd + j] * window[ch * w1 + j];
            }
            acc += w[ch * wd + w1] * x[t * c + ch];
            out[t * c + ch] = acc / (1.0 + (-acc).exp());
            for j in 0..w1 - 1 {
                next[ch * w1 + j] = window[ch * w1 + j + 1];
            }
            next[ch * w1 + w1 - 1] = x[t * c + ch];
        }
        *window = next;
    }
}

impl<L: StateLayout> Kernels for Naive<L> {
    type Layout = L;
    type Memory = HostMemory;

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn memory(&self) -> &HostMemory {
        &HostMemory
    }

    fn run_gate(&self, call: GateCall<'_>) -> Result<()> {
        let dims = *call.dims();
        let mut io = call.into_io();
        let (a, b, al, db) = (read(&io.a, false)?, read(&io.b, false)?, read(&io.a_log, false)?, read(&io.dt_bias, false)?);
        let hv = dims.num_v_heads;
        let sp = |x: f32| if x > 20.0 { x } else { x.exp().ln_1p() };
        let g: Vec<f32> = a.iter().enumerate().map(|(i, &x)| -al[i % hv].exp() * sp(x + db[i % hv])).collect();
        let beta: Vec<f32> = b.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
        write(&mut io.g, &g)?;
        write(&mut io.beta, &beta)
    }

    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch) = (call.ticket(), call.layer(), call.batch());
        let dims = call.dims();
        let mut io = call.into_io();
        let (x, w) = (read(&io.x, false)?, read(&io.weight, false)?);
        let bias = io.bias.as_ref().map(|b| read(b, false)).transpose()?;
        let mut out = vec![0.0; x.len()];
        let g = *pool.geometry();
        pool.checked_parts(ticket, |parts| {
            let cd = g.config.conv_dtype;
            for s in 0..batch.num_seqs() {
                let slot = batch.slots()[s].index();
                let off = g.conv_offset(layer, slot);
                let mut win = if batch.has_initial_state()[s] {
                    cd.decode_vec(&parts.conv.bytes()[off..off + g.conv_bytes()])
                } else {
                    vec![0.0; dims.conv_elems()]
                };
                let r = batch.seq_range(s);
                for (i, t) in r.clone().enumerate() {
                    Self::conv_run(&dims, &io, &mut win, &x, t, &mut out, &w, &bias);
                    for sn in batch.snapshots_of(s).filter(|sn| sn.position == i + 1) {
                        let o2 = g.conv_offset(layer, sn.slot.index());
                        cd.encode(&win, &mut parts.conv.bytes_mut()[o2..o2 + g.conv_bytes()]);
                    }
                }
                cd.encode(&win, &mut parts.conv.bytes_mut()[off..off + g.conv_bytes()]);
            }
            Ok(())
        })?;
        write(&mut io.out, &out)
    }

    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch) = (call.ticket(), call.layer(), call.batch());
        let dims = call.dims();
        let mut io = call.into_io();
        let (x, w) = (read(&io.x, false)?, read(&io.weight, false)?);
        let bias = io.bias.as_ref().map(|b| read(b, false)).transpose()?;
        let mut out = vec![0.0; x.len()];
        let g = *pool.geometry();
        pool.checked_parts(ticket, |parts| {
            let cd = g.config.conv_dtype;
            for (t, slot) in batch.slots().iter().enumerate() {
                let off = g.conv_offset(layer, slot.index());
                let mut win = cd.decode_vec(&parts.conv.bytes()[off..off + g.conv_bytes()]);
                Self::conv_run(&dims, &io, &mut win, &x, t, &mut out, &w, &bias);
                cd.encode(&win, &mut parts.conv.bytes_mut()[off..off + g.conv_bytes()]);
            }
            Ok(())
        })?;
        write(&mut io.out, &out)
    }

    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let (ticket, layer, batch) = (call.ticket(), call.layer(), call.batch());
        let dims = call.dims();
        let mut io = call.into_io();
        let (x, w) = (read(&io.x, false)?, read(&io.weight, false)?);
        let bias = io.bias.as_ref().map(|b| read(b, false)).transpose()?;
        let mut out = vec![0.0; x.len()];
        let g = *pool.geometry();
        pool.checked_parts(ticket, |parts| {
            let windows = parts.windows.ok_or(Error::NoSpeculativeBuffers)?;
            let cd = g.config.conv_dtype;
            let dn = batch.draft();
            for (i, slot) in batch.slots().iter().enumerate() {
                let mut wins: Vec<Vec<f32>> = Vec::new();
                for t in 0..dn {
                    let mut win = match batch.parent(i, t) {
                        None => {
                            let off = g.conv_offset(layer, slot.index());
                            cd.decode_vec(&parts.conv.bytes()[off..off + g.conv_bytes()])
                        }
                        Some(p) => wins[p].clone(),
                    };
                    Self::conv_run(&dims, &io, &mut win, &x, i * dn + t, &mut out, &w, &bias);
                    let off = g.window_offset(layer, slot.index(), t);
                    cd.encode(&win, &mut windows.bytes_mut()[off..off + g.conv_bytes()]);
                    wins.push(win);
                }
            }
            Ok(())
        })?;
        write(&mut io.out, &out)
    }

    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch) = (call.ticket(), call.layer(), call.batch());
        let mut io = call.into_io();
        let x = self.tokens(&io)?;
        let g = *pool.geometry();
        let dims = g.config.dims;
        let per_o = dims.num_v_heads * dims.head_v_dim;
        let mut o = vec![0.0; batch.tokens() * per_o];
        pool.checked_parts(ticket, |parts| {
            for s in 0..batch.num_seqs() {
                let off = g.temporal_offset(layer, batch.slots()[s].index());
                let init = batch.has_initial_state()[s] || self.fault == Fault::IgnoreInitFlag;
                let mut st =
                    if init { load::<L>(&g, &parts.temporal.bytes()[off..off + g.state_bytes()]) } else { vec![0.0; dims.state_elems()] };
                for (i, t) in batch.seq_range(s).enumerate() {
                    let ot = step(&dims, &io.params, &mut st, &x, t);
                    o[t * per_o..(t + 1) * per_o].copy_from_slice(&ot);
                    for sn in batch.snapshots_of(s).filter(|sn| sn.position == i + 1) {
                        let o2 = g.temporal_offset(layer, sn.slot.index());
                        store::<L>(&g, &st, &mut parts.temporal.bytes_mut()[o2..o2 + g.state_bytes()]);
                    }
                }
                store::<L>(&g, &st, &mut parts.temporal.bytes_mut()[off..off + g.state_bytes()]);
                if self.fault == Fault::BatchDependent {
                    for t in batch.seq_range(s) {
                        o[t * per_o] += 1e-3 * s as f32;
                    }
                }
            }
            Ok(())
        })?;
        write(&mut io.o, &o)
    }

    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch) = (call.ticket(), call.layer(), call.batch());
        let mut io = call.into_io();
        let x = self.tokens(&io)?;
        let g = *pool.geometry();
        let dims = g.config.dims;
        let per_o = dims.num_v_heads * dims.head_v_dim;
        let mut o = vec![0.0; batch.tokens() * per_o];
        pool.checked_parts(ticket, |parts| {
            for (t, slot) in batch.slots().iter().enumerate() {
                let off = g.temporal_offset(layer, slot.index());
                let mut st = load::<L>(&g, &parts.temporal.bytes()[off..off + g.state_bytes()]);
                let ot = step(&dims, &io.params, &mut st, &x, t);
                o[t * per_o..(t + 1) * per_o].copy_from_slice(&ot);
                store::<L>(&g, &st, &mut parts.temporal.bytes_mut()[off..off + g.state_bytes()]);
            }
            Ok(())
        })?;
        write(&mut io.o, &o)
    }

    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let (ticket, layer, batch) = (call.ticket(), call.layer(), call.batch());
        let mut io = call.into_io();
        let x = self.tokens(&io)?;
        let g = *pool.geometry();
        let dims = g.config.dims;
        let per_o = dims.num_v_heads * dims.head_v_dim;
        let mut o = vec![0.0; batch.tokens() * per_o];
        pool.checked_parts(ticket, |parts| {
            let scratch = parts.scratch.ok_or(Error::NoSpeculativeBuffers)?;
            let dn = batch.draft();
            for (i, slot) in batch.slots().iter().enumerate() {
                let off = g.temporal_offset(layer, slot.index());
                let root = load::<L>(&g, &parts.temporal.bytes()[off..off + g.state_bytes()]);
                let mut states: Vec<Vec<f32>> = Vec::new();
                for t in 0..dn {
                    let mut st = match batch.parent(i, t) {
                        None => root.clone(),
                        Some(p) => states[p].clone(),
                    };
                    let tok = i * dn + t;
                    let ot = step(&dims, &io.params, &mut st, &x, tok);
                    o[tok * per_o..(tok + 1) * per_o].copy_from_slice(&ot);
                    let so = g.scratch_offset(layer, slot.index(), t);
                    store::<L>(&g, &st, &mut scratch.bytes_mut()[so..so + g.state_bytes()]);
                    states.push(st);
                }
            }
            Ok(())
        })?;
        write(&mut io.o, &o)
    }

    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        let (layer, batch) = (call.layer(), call.batch());
        if self.fault == Fault::CommitOffByOne {
            let acc: Vec<Option<usize>> = batch.accepted().iter().map(|a| a.map(|a| a.saturating_sub(1))).collect();
            let b2 = CommitBatch::new(pool, batch.slots(), &acc, batch.snapshots())?;
            return pool.commit_accepted(layer, &b2);
        }
        pool.commit_checked(&call)
    }
}
