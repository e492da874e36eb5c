//! On-device checks against the f64 oracle. They need CANN and an Ascend
//! device, so they are `#[ignore]`d; run them with
//! `cargo test -p deltanet-backend-npu -- --ignored` after sourcing CANN's `set_env.sh`.

use deltanet_backend_npu::{DeviceBuffer, NpuDispatcher};
use deltanet_core::oracle::{error_ratio, gated_delta_rule};
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// bf16 inputs and bf16 state through the whole pipeline.
const TOL: f64 = deltanet_core::tolerance::NPU_DEVICE;

struct Dev {
    buf: DeviceBuffer,
    meta: TensorMeta,
    /// The values as the device holds them (rounded to the dtype).
    host: Vec<f32>,
}

impl Dev {
    fn r(&self) -> TensorRef<'_> {
        // SAFETY: the buffer holds `meta.span()` elements of `meta.dtype()` on the device and outlives the view.
        unsafe { TensorRef::from_raw(self.buf.ptr(), self.meta) }
    }
    fn m(&mut self) -> TensorMut<'_> {
        // SAFETY: as above; `&mut self` makes the view exclusive.
        unsafe { TensorMut::from_raw(self.buf.ptr(), self.meta) }
    }
    fn read(&self, d: &NpuDispatcher) -> Vec<f32> {
        let ctx = d.memory().context();
        ctx.synchronize().unwrap();
        let mut bytes = vec![0u8; self.buf.len()];
        ctx.api().memcpy_d2h(&mut bytes, self.buf.ptr()).unwrap();
        self.meta.dtype().decode_vec(&bytes)
    }
}

fn upload(d: &NpuDispatcher, dtype: DType, shape: &[usize], values: Vec<f32>) -> Dev {
    let host: Vec<f32> = values.iter().map(|&x| dtype.round(x)).collect();
    let bytes = dtype.encode_vec(&host);
    let ctx = d.memory().context();
    let buf = ctx.alloc(bytes.len()).unwrap();
    ctx.api().memcpy_h2d(buf.ptr(), &bytes).unwrap();
    Dev { buf, meta: TensorMeta::contiguous(Device::Npu(ctx.device()), dtype, shape).unwrap(), host }
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

struct Inputs {
    q: Dev,
    k: Dev,
    v: Dev,
    g: Dev,
    beta: Dev,
    o: Dev,
}

fn inputs(d: &NpuDispatcher, rng: &mut ChaCha8Rng, dims: &ModelDims, t: usize) -> Inputs {
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    Inputs {
        q: upload(d, DType::BF16, &[t, hk, k], uniform(rng, t * hk * k, -1.0, 1.0)),
        k: upload(d, DType::BF16, &[t, hk, k], uniform(rng, t * hk * k, -1.0, 1.0)),
        v: upload(d, DType::BF16, &[t, hv, v], uniform(rng, t * hv * v, -1.0, 1.0)),
        g: upload(d, DType::F32, &[t, hv], uniform(rng, t * hv, -1.0, -0.01)),
        beta: upload(d, DType::BF16, &[t, hv], uniform(rng, t * hv, 0.05, 0.95)),
        o: upload(d, DType::BF16, &[t, hv, v], uniform(rng, t * hv * v, -1.0, 1.0)),
    }
}

impl Inputs {
    fn io(&mut self, dims: &ModelDims) -> DeltaIo<'_> {
        DeltaIo {
            q: self.q.r(),
            k: self.k.r(),
            v: self.v.r(),
            g: self.g.r(),
            beta: self.beta.r(),
            o: self.o.m(),
            params: DeltaParams::new(dims),
        }
    }
}

fn dims() -> ModelDims {
    ModelDims::new(2, 4, 64, 64, 4).unwrap()
}

#[test]
#[ignore = "needs CANN and an Ascend NPU"]
fn extend_then_decode_match_the_oracle() {
    let d = NpuDispatcher::new(0).expect("NPU");
    let m = dims();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut pool = d.new_pool(PoolConfig::new(1, 4, m).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16)).unwrap();
    let s = pool.alloc(2).unwrap();
    let cu = [0, 70, 75];
    let batch = ExtendBatch::new(&pool, &cu, &s, &[false, false]).unwrap();
    let mut x = inputs(&d, &mut rng, &m, 75);
    d.extend(&mut pool, 0, &batch, x.io(&m)).unwrap();
    let params = DeltaParams::new(&m);
    let want = gated_delta_rule(&m, &params, &x.q.host, &x.k.host, &x.v.host, &x.g.host, &x.beta.host, &cu, None);
    let ratio = error_ratio(&x.o.read(&d), &want.o);
    assert!(ratio < TOL, "extend output error ratio {ratio}");
    for (i, &slot) in s.iter().enumerate() {
        let st = pool.export(slot).unwrap().temporal_f32();
        let per = m.state_elems();
        let r = error_ratio(&st, &want.final_state[i * per..(i + 1) * per]);
        assert!(r < TOL, "final state {i} error ratio {r}");
    }
    // One more token each continues the state exactly like one longer extend.
    let dec = DecodeBatch::new(&pool, &s).unwrap();
    let mut y = inputs(&d, &mut rng, &m, 2);
    d.decode(&mut pool, 0, &dec, y.io(&m)).unwrap();
    let cat = |a: &[f32], b: &[f32], row: usize| -> Vec<f32> {
        let mut out = a[..70 * row].to_vec();
        out.extend_from_slice(&b[..row]);
        out.extend_from_slice(&a[70 * row..]);
        out.extend_from_slice(&b[row..]);
        out
    };
    let (hk, hv, k, v) = (m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim);
    let want2 = gated_delta_rule(
        &m,
        &params,
        &cat(&x.q.host, &y.q.host, hk * k),
        &cat(&x.k.host, &y.k.host, hk * k),
        &cat(&x.v.host, &y.v.host, hv * v),
        &cat(&x.g.host, &y.g.host, hv),
        &cat(&x.beta.host, &y.beta.host, hv),
        &[0, 71, 77],
        None,
    );
    let o = y.o.read(&d);
    let want_o: Vec<f64> = [&want2.o[70 * hv * v..71 * hv * v], &want2.o[76 * hv * v..77 * hv * v]].concat();
    let r = error_ratio(&o, &want_o);
    assert!(r < TOL, "decode output error ratio {r}");
}

#[test]
#[ignore = "needs CANN and an Ascend NPU"]
fn verify_then_commit_equals_decoding_the_accepted_drafts() {
    let d = NpuDispatcher::new(0).expect("NPU");
    let m = dims();
    let dd = 4;
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let cfg = PoolConfig::new(1, 4, m).with_state_dtype(DType::BF16).with_conv_dtype(DType::BF16).with_speculative(dd);
    let mut pool = d.new_pool(cfg).unwrap();
    let s = pool.alloc(1).unwrap();
    let init: Vec<f32> = uniform(&mut rng, m.state_elems(), -0.5, 0.5);
    let host = HostState::from_f32(1, m, DType::BF16, DType::BF16, &init, &vec![0.25; m.conv_elems()]).unwrap();
    pool.import(s[0], &host).unwrap();
    let before = pool.export(s[0]).unwrap();
    let batch = VerifyBatch::chain(&pool, &s).unwrap();
    let mut x = inputs(&d, &mut rng, &m, dd);
    d.verify(&mut pool, 0, &batch, x.io(&m)).unwrap();
    assert_eq!(pool.export(s[0]).unwrap(), before, "verify alone leaves the main state");
    let accepted = 2;
    let cb = CommitBatch::new(&pool, &s, &[Some(accepted)], &[]).unwrap();
    d.commit(&mut pool, 0, &cb).unwrap();
    let params = DeltaParams::new(&m);
    let (hk, hv, k, v) = (m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim);
    let n = accepted + 1;
    let want = gated_delta_rule(
        &m,
        &params,
        &x.q.host[..n * hk * k],
        &x.k.host[..n * hk * k],
        &x.v.host[..n * hv * v],
        &x.g.host[..n * hv],
        &x.beta.host[..n * hv],
        &[0, n],
        Some(&before.temporal_f32()),
    );
    let r = error_ratio(&pool.export(s[0]).unwrap().temporal_f32(), &want.final_state);
    assert!(r < TOL, "committed state error ratio {r}");
}
