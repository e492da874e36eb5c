//! What every stand-in test shares: a dispatcher over the recorder, the
//! test model's dims, random device tensors, and readers of the recorded
//! calls and copies.

use deltanet_backend_npu::api::{AclDType, TensorDesc};
use deltanet_backend_npu::testing::{Event, Recorded, Recorder};
use deltanet_backend_npu::{DeviceBuffer, NpuDispatcher};
use deltanet_core::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

pub const A2: &str = "Ascend910B3";
pub const A950: &str = "Ascend950PR_9589";
pub const ND: i32 = 2;

pub fn setup(soc: &str) -> (Arc<Recorder>, NpuDispatcher) {
    let rec = Arc::new(Recorder::new(soc));
    let d = NpuDispatcher::with_api(rec.clone(), 0).expect("dispatcher over the recorder");
    (rec, d)
}

/// HK=2, HV=4, K=32, V=16 (K != V), W=4: conv_dim = 2*2*32 + 4*16 = 192.
pub fn dims() -> ModelDims {
    ModelDims::new(2, 4, 32, 16, 4).unwrap()
}

pub struct DevT {
    pub buf: DeviceBuffer,
    pub meta: TensorMeta,
}

impl DevT {
    pub fn r(&self) -> TensorRef<'_> {
        // SAFETY: the buffer holds `meta.span()` elements of `meta.dtype()` and outlives the view.
        unsafe { TensorRef::from_raw(self.buf.ptr(), self.meta) }
    }
    pub fn m(&mut self) -> TensorMut<'_> {
        // SAFETY: as above, and `&mut self` makes the view exclusive.
        unsafe { TensorMut::from_raw(self.buf.ptr(), self.meta) }
    }
    pub fn addr(&self) -> u64 {
        self.buf.ptr()
    }
}

/// A device tensor filled with fresh random values in (-1, 1) (never zeros).
pub fn rand_t(d: &NpuDispatcher, rng: &mut ChaCha8Rng, dtype: DType, shape: &[usize]) -> DevT {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n).map(|_| rng.gen_range(0.05f32..0.95) * if rng.gen() { 1.0 } else { -1.0 }).collect();
    let bytes = dtype.encode_vec(&vals);
    let ctx = d.memory().context();
    let buf = ctx.alloc(bytes.len()).unwrap();
    ctx.api().memcpy_h2d(buf.ptr(), &bytes).unwrap();
    DevT { buf, meta: TensorMeta::contiguous(Device::Npu(0), dtype, shape).unwrap() }
}

pub struct DeltaT {
    pub q: DevT,
    pub k: DevT,
    pub v: DevT,
    pub g: DevT,
    pub beta: DevT,
    pub o: DevT,
}

pub fn delta_t(d: &NpuDispatcher, rng: &mut ChaCha8Rng, t: usize, beta_dtype: DType) -> DeltaT {
    let m = dims();
    DeltaT {
        q: rand_t(d, rng, DType::BF16, &[t, m.num_k_heads, m.head_k_dim]),
        k: rand_t(d, rng, DType::BF16, &[t, m.num_k_heads, m.head_k_dim]),
        v: rand_t(d, rng, DType::BF16, &[t, m.num_v_heads, m.head_v_dim]),
        g: rand_t(d, rng, DType::F32, &[t, m.num_v_heads]),
        beta: rand_t(d, rng, beta_dtype, &[t, m.num_v_heads]),
        o: rand_t(d, rng, DType::BF16, &[t, m.num_v_heads, m.head_v_dim]),
    }
}

impl DeltaT {
    pub fn io(&mut self) -> DeltaIo<'_> {
        DeltaIo {
            q: self.q.r(),
            k: self.k.r(),
            v: self.v.r(),
            g: self.g.r(),
            beta: self.beta.r(),
            o: self.o.m(),
            params: DeltaParams::new(&dims()),
        }
    }
}

pub fn desc_addr(pool: &PoolOf<NpuDispatcher>, kind: BufferKind, layer: usize) -> u64 {
    pool.descriptors().into_iter().find(|d| d.kind == kind && d.layer == layer).unwrap().addr
}

/// Asserts the documented contract of one tensor argument.
pub fn expect_t(r: &Recorded, name: &str, dtype: AclDType, shape: &[usize]) -> TensorDesc {
    let d = r.t(name);
    assert_eq!(d.dtype, dtype, "{} {name} dtype", r.op);
    assert_eq!(d.shape, shape.iter().map(|&x| x as i64).collect::<Vec<_>>(), "{} {name} dims", r.op);
    assert_eq!(d.format, ND, "{} {name} format", r.op);
    assert_eq!(*d.strides.last().unwrap(), 1, "{} {name} innermost stride", r.op);
    d
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    TensorDesc::contiguous(0, AclDType::F32, shape).strides
}

/// Copy/zero events right before call `idx` (back to the previous call or sync) and right after it (up to the next sync).
pub fn around(events: &[Event], call_idx: usize) -> (Vec<Event>, Vec<Event>) {
    let pos: Vec<usize> = events.iter().enumerate().filter(|(_, e)| matches!(e, Event::Call(_))).map(|(i, _)| i).collect();
    let p = pos[call_idx];
    let mut pre = Vec::new();
    for e in events[..p].iter().rev() {
        match e {
            Event::Call(_) | Event::Sync => break,
            other => pre.push(other.clone()),
        }
    }
    pre.reverse();
    let mut post = Vec::new();
    for e in &events[p + 1..] {
        match e {
            Event::Call(_) | Event::Sync => break,
            other => post.push(other.clone()),
        }
    }
    (pre, post)
}

pub fn copies(ev: &[Event]) -> Vec<(u64, u64, usize)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Copy { dst, src, bytes } => Some((*dst, *src, *bytes)),
            _ => None,
        })
        .collect()
}

pub fn calls_named(rec: &Recorder, name: &str) -> Vec<Recorded> {
    rec.calls().into_iter().filter(|c| c.op == name).collect()
}

pub fn spec_pool(d: &NpuDispatcher, draft: usize) -> PoolOf<NpuDispatcher> {
    d.new_pool(PoolConfig::new(2, 6, dims()).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16).with_speculative(draft)).unwrap()
}
