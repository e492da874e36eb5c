//! The operators evaluated on the stand-in's host memory, per their
//! documented semantics (the ops-transformer `docs/aclnn*.md`, the recurrent
//! operator's golden reference, the CausalConv1d kernel's window order; see
//! the crate docs), so the layer forward can run end to end on the stand-in
//! and its outputs and states be compared with the f64 oracle. This checks
//! the marshalling (which memory each operator reads and writes, the index
//! tables, the casts) numerically; it says nothing about the real operators.
//!
//! Arithmetic is f64; every result is rounded to its output tensor's dtype.

use super::recorder::Recorded;
use crate::api::{AclDType, DevPtr, TensorDesc};
use crate::ops::{OpCall, UnaryOp};
use std::collections::HashMap;

/// The stand-in's live allocations (address → bytes), through which tensors are read and written.
pub(super) struct Host<'a> {
    pub(super) allocs: &'a HashMap<DevPtr, usize>,
}

impl Host<'_> {
    /// Panics unless every element `d` addresses lies in one live allocation.
    fn check(&self, d: &TensorDesc) {
        let bytes = (d.span() as usize * d.dtype.size()) as u64;
        let ok = self.allocs.iter().any(|(&a, &len)| d.addr >= a && d.addr + bytes <= a + len as u64);
        assert!(ok, "tensor at {:#x} ({} elements) is outside every live allocation", d.addr, d.span());
    }

    /// The tensor's elements in row-major order over its view dims.
    fn read(&self, d: &TensorDesc) -> Vec<f64> {
        self.check(d);
        let size = d.dtype.size() as u64;
        // SAFETY: every offset lies inside one live host allocation (checked),
        // which stands in for device memory and is read as the tensor's dtype.
        offsets(d).into_iter().map(|o| unsafe { load(d.addr + o as u64 * size, d.dtype) }).collect()
    }

    /// Writes `values` (row-major over the view dims), rounded to the tensor's dtype.
    fn write(&self, d: &TensorDesc, values: &[f64]) {
        self.check(d);
        let offs = offsets(d);
        assert_eq!(offs.len(), values.len(), "write of {} values to a tensor of {}", values.len(), offs.len());
        let size = d.dtype.size() as u64;
        for (o, &v) in offs.into_iter().zip(values) {
            // SAFETY: as in `read`; the stand-in's lock is held, so nothing else touches the memory.
            unsafe { store(d.addr + o as u64 * size, d.dtype, v) };
        }
    }
}

/// Element offsets of every element of `d`, in row-major order of its dims.
fn offsets(d: &TensorDesc) -> Vec<i64> {
    let n: i64 = d.shape.iter().product();
    let mut idx = vec![0i64; d.shape.len()];
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        out.push(idx.iter().zip(&d.strides).map(|(i, s)| i * s).sum());
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < d.shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

/// # Safety
/// `addr` is valid for a read of one element of `dtype`.
unsafe fn load(addr: u64, dtype: AclDType) -> f64 {
    // SAFETY: per the contract; unaligned reads, since views may start anywhere.
    unsafe {
        match dtype {
            AclDType::F32 => (addr as *const f32).read_unaligned() as f64,
            AclDType::F16 => half::f16::from_bits((addr as *const u16).read_unaligned()).to_f64(),
            AclDType::BF16 => half::bf16::from_bits((addr as *const u16).read_unaligned()).to_f64(),
            AclDType::I32 => (addr as *const i32).read_unaligned() as f64,
            AclDType::I64 => (addr as *const i64).read_unaligned() as f64,
        }
    }
}

/// # Safety
/// `addr` is valid for a write of one element of `dtype`.
unsafe fn store(addr: u64, dtype: AclDType, v: f64) {
    // SAFETY: per the contract.
    unsafe {
        match dtype {
            AclDType::F32 => (addr as *mut f32).write_unaligned(v as f32),
            AclDType::F16 => (addr as *mut u16).write_unaligned(half::f16::from_f64(v).to_bits()),
            AclDType::BF16 => (addr as *mut u16).write_unaligned(half::bf16::from_f64(v).to_bits()),
            AclDType::I32 => (addr as *mut i32).write_unaligned(v as i32),
            AclDType::I64 => (addr as *mut i64).write_unaligned(v as i64),
        }
    }
}

/// `values` of `d` broadcast (numpy rules, aligned on the right) to `shape`.
fn broadcast(d: &TensorDesc, values: &[f64], shape: &[i64]) -> Vec<f64> {
    let lead = shape.len() - d.shape.len();
    let n: i64 = shape.iter().product();
    let mut idx = vec![0i64; shape.len()];
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut lin = 0i64;
        for (a, &dim) in d.shape.iter().enumerate() {
            lin = lin * dim + if dim == 1 { 0 } else { idx[lead + a] };
        }
        out.push(values[lin as usize]);
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

/// Runs the recorded call on host memory.
pub(super) fn evaluate(host: &Host<'_>, r: &Recorded) {
    let binary = |f: &dyn Fn(f64, f64) -> f64| {
        let (a, b, out) = (r.t("self_"), r.t("other"), r.t("out"));
        let (av, bv) = (broadcast(&a, &host.read(&a), &out.shape), broadcast(&b, &host.read(&b), &out.shape));
        host.write(&out, &av.iter().zip(&bv).map(|(&x, &y)| f(x, y)).collect::<Vec<_>>());
    };
    let unary = |f: &dyn Fn(f64) -> f64| {
        let x = host.read(&r.t("self_"));
        host.write(&r.t("out"), &x.into_iter().map(f).collect::<Vec<_>>());
    };
    match r.call {
        OpCall::Cast { .. } => unary(&|x| x),
        OpCall::Unary { op, .. } => unary(&match op {
            UnaryOp::Exp => f64::exp,
            UnaryOp::Neg => |x: f64| -x,
            UnaryOp::Sigmoid => |x: f64| 1.0 / (1.0 + (-x).exp()),
        }),
        OpCall::Mul { .. } => binary(&|x, y| x * y),
        OpCall::Add { .. } => {
            let alpha = r.scalars[0] as f64;
            binary(&|x, y| x + alpha * y)
        }
        OpCall::Softplus { .. } => {
            let (beta, threshold) = (r.scalars[0] as f64, r.scalars[1] as f64);
            unary(&|x| if beta * x > threshold { x } else { (beta * x).exp().ln_1p() / beta })
        }
        OpCall::RmsNorm { epsilon, .. } => rms_norm(host, r, epsilon),
        OpCall::ChunkGatedDeltaRule { scale, .. } => chunk_delta_rule(host, r, scale as f64),
        OpCall::RecurrentGatedDeltaRule { scale, .. } => recurrent_delta_rule(host, r, scale as f64),
        OpCall::CausalConv1dFn { activation, .. } | OpCall::CausalConv1dUpdate { activation, .. } => {
            causal_conv1d(host, r, activation.to_bytes() == b"silu")
        }
    }
}

/// `aclnnRmsNorm`: over each run of the trailing `gamma` elements of `x`,
/// `rstd = 1 / sqrt(mean(x^2) + epsilon)` and `y = x * rstd * gamma`, in f32
/// as the operator computes (the docs' formula; the stand-in does it in f64
/// and rounds `y` to its dtype and `rstd` to f32).
fn rms_norm(host: &Host<'_>, r: &Recorded, epsilon: f64) {
    let (x, gamma, y, rstd) = (r.t("x"), r.t("gamma"), r.t("yOut"), r.t("rstdOut"));
    let (xv, gv) = (host.read(&x), host.read(&gamma));
    let n = gv.len();
    let mut out = Vec::with_capacity(xv.len());
    let mut rs = Vec::with_capacity(xv.len() / n);
    for row in xv.chunks_exact(n) {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / n as f64 + epsilon).sqrt();
        rs.push(inv);
        out.extend(row.iter().zip(&gv).map(|(v, g)| v * inv * g));
    }
    host.write(&y, &out);
    host.write(&rstd, &rs);
}

/// The per-token inputs of a GDN operator call, read densely.
struct DeltaInputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    beta: Vec<f64>,
    g: Option<Vec<f64>>,
    nk: usize,
    dk: usize,
    nv: usize,
    dv: usize,
    scale: f64,
}

impl DeltaInputs {
    fn read(host: &Host<'_>, r: &Recorded, g: &str, scale: f64) -> Self {
        let (q, v) = (r.t("query"), r.t("value"));
        DeltaInputs {
            q: host.read(&q),
            k: host.read(&r.t("key")),
            v: host.read(&v),
            beta: host.read(&r.t("beta")),
            g: r.opt(g).map(|g| host.read(&g)),
            nk: q.shape[1] as usize,
            dk: q.shape[2] as usize,
            nv: v.shape[1] as usize,
            dv: v.shape[2] as usize,
            scale,
        }
    }

    /// Token `t` of value head `h` (key head `h / (Nv/Nk)`) on the V-major
    /// state `s` (`[Dv, Dk]`): decay, delta update, and the output row.
    fn step(&self, t: usize, h: usize, s: &mut [f64], out: &mut [f64]) {
        let (dk, dv) = (self.dk, self.dv);
        let kh = h / (self.nv / self.nk);
        let q = &self.q[(t * self.nk + kh) * dk..][..dk];
        let k = &self.k[(t * self.nk + kh) * dk..][..dk];
        let v = &self.v[(t * self.nv + h) * dv..][..dv];
        let decay = self.g.as_ref().map_or(1.0, |g| g[t * self.nv + h].exp());
        let beta = self.beta[t * self.nv + h];
        for (j, row) in s.chunks_exact_mut(dk).enumerate() {
            row.iter_mut().for_each(|x| *x *= decay);
            let u = beta * (v[j] - row.iter().zip(k).map(|(a, b)| a * b).sum::<f64>());
            row.iter_mut().zip(k).for_each(|(x, &ki)| *x += u * ki);
            out[j] = self.scale * row.iter().zip(q).map(|(a, b)| a * b).sum::<f64>();
        }
    }
}

/// Chunk length of the modelled chunk operator.
const CHUNK: usize = 64;

/// `v` rounded to `dtype` (the floating dtypes; others unchanged).
fn round_to(dtype: AclDType, v: f64) -> f64 {
    match dtype {
        AclDType::F32 => v as f32 as f64,
        AclDType::F16 => half::f16::from_f64(v).to_f64(),
        AclDType::BF16 => half::bf16::from_f64(v).to_f64(),
        AclDType::I32 | AclDType::I64 => v,
    }
}

/// `aclnnChunkGatedDeltaRule`: sequence `b` (of `actualSeqLengths[b]` packed
/// tokens) runs from `initialState[b]`; its last state goes to `finalState[b]`.
/// Modelled as a chunked kernel: the state is held in the state's dtype
/// between chunks of [`CHUNK`] tokens from the sequence's start (so an extend
/// split at multiples of 64 is bitwise one extend, DESIGN invariant 2; how
/// the vendor operator holds it between chunks is not confirmed).
fn chunk_delta_rule(host: &Host<'_>, r: &Recorded, scale: f64) {
    let x = DeltaInputs::read(host, r, "gOptional", scale);
    let (per, nv, dv) = (x.dv * x.dk, x.nv, x.dv);
    let state_dtype = r.t("finalState").dtype;
    let mut state = host.read(&r.t("initialState"));
    let mut out = vec![0.0; x.v.len()];
    let mut t0 = 0;
    for (b, &len) in r.ints("actualSeqLengths").iter().enumerate() {
        for h in 0..nv {
            let s = &mut state[(b * nv + h) * per..][..per];
            for t in t0..t0 + len as usize {
                x.step(t, h, s, &mut out[(t * nv + h) * dv..][..dv]);
                if (t + 1 - t0) % CHUNK == 0 {
                    s.iter_mut().for_each(|v| *v = round_to(state_dtype, *v));
                }
            }
        }
        t0 += len as usize;
    }
    host.write(&r.t("out"), &out);
    host.write(&r.t("finalState"), &state);
}

/// `aclnnRecurrentGatedDeltaRule`, in place on `stateRef`: sequence `b`
/// starting at packed token `s` starts from block
/// `ssmStateIndices[s + numAcceptedTokens[b] - 1]` and writes token `s + t`'s
/// state to block `ssmStateIndices[s + t]`.
fn recurrent_delta_rule(host: &Host<'_>, r: &Recorded, scale: f64) {
    let x = DeltaInputs::read(host, r, "g", scale);
    let (per, nv, dv) = (x.dv * x.dk, x.nv, x.dv);
    let st = r.t("stateRef");
    let mut state = host.read(&st);
    let (idx, accepted) = (r.ints("ssmStateIndices"), r.ints("numAcceptedTokens"));
    let mut out = vec![0.0; x.v.len()];
    let mut t0 = 0;
    for (b, &len) in r.ints("actualSeqLengths").iter().enumerate() {
        let start = idx[t0 + accepted[b] as usize - 1] as usize;
        for h in 0..nv {
            let mut s = state[(start * nv + h) * per..][..per].to_vec();
            for t in t0..t0 + len as usize {
                x.step(t, h, &mut s, &mut out[(t * nv + h) * dv..][..dv]);
                state[(idx[t] as usize * nv + h) * per..][..per].copy_from_slice(&s);
            }
        }
        t0 += len as usize;
    }
    host.write(&r.t("out"), &out);
    host.write(&st, &state);
}

/// `aclnnCausalConv1dFn` / `aclnnCausalConv1dUpdate`: each sequence's window
/// is its cache line (`[K-1, dim]`, oldest row first; zeros where
/// `initialStateModeOptional` is 0) followed by its tokens; output row `t`
/// is `sum_j weight[j] * window[t + j]` (+ bias, then SiLU); the cache line
/// becomes the last `K-1` rows of the window.
fn causal_conv1d(host: &Host<'_>, r: &Recorded, silu: bool) {
    let (x, w, st) = (r.t("x"), r.t("weight"), r.t("convStatesRef"));
    let (xv, wv, mut states) = (host.read(&x), host.read(&w), host.read(&st));
    let bias = r.opt("biasOptional").map(|b| host.read(&b));
    let (kw, dim) = (w.shape[0] as usize, w.shape[1] as usize);
    let w1 = kw - 1;
    let line = w1 * dim;
    // Sequences as token ranges: from `queryStartLocOptional`, else one row of `x` (`[batch, L, dim]`) each.
    let bounds: Vec<usize> = match r.opt("queryStartLocOptional") {
        Some(_) => r.ints("queryStartLocOptional").iter().map(|&v| v as usize).collect(),
        None => (0..=x.shape[0] as usize).map(|b| b * x.shape[1] as usize).collect(),
    };
    let cache = r.ints("cacheIndicesOptional");
    let mode = r.opt("initialStateModeOptional").map(|_| r.ints("initialStateModeOptional"));
    let mut y = vec![0.0; xv.len()];
    for (b, seq) in bounds.windows(2).enumerate() {
        if cache[b] < 0 {
            continue;
        }
        let c = cache[b] as usize;
        let mut window: Vec<f64> = match &mode {
            Some(m) if m[b] == 0 => vec![0.0; line],
            _ => states[c * line..][..line].to_vec(),
        };
        window.extend_from_slice(&xv[seq[0] * dim..seq[1] * dim]);
        for (i, t) in (seq[0]..seq[1]).enumerate() {
            for ch in 0..dim {
                let mut acc = bias.as_ref().map_or(0.0, |b| b[ch]);
                for j in 0..kw {
                    acc += wv[j * dim + ch] * window[(i + j) * dim + ch];
                }
                y[t * dim + ch] = if silu { acc / (1.0 + (-acc).exp()) } else { acc };
            }
        }
        states[c * line..][..line].copy_from_slice(&window[window.len() - line..]);
    }
    host.write(&r.t("y"), &y);
    host.write(&st, &states);
}
