//! The CPU kernels against /work/shared/golden (fla's and transformers'
//! outputs on fixed inputs): ratio <= 1e-5, both layouts. The layer file
//! runs conv + gate + delta rule through `deltanet_core::forward_extend`.
//! Skipped (with a message) when the golden directory is absent.

use deltanet_backend_cpu::CpuDispatcher;
use deltanet_core::oracle::error_ratio;
use deltanet_core::*;
use half::bf16;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

fn dir() -> Option<PathBuf> {
    let d = std::env::var_os("DELTANET_GOLDEN_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/work/shared/golden"));
    if d.join("layer_f32.safetensors").exists() {
        Some(d)
    } else {
        eprintln!("skipped: no golden files in {}", d.display());
        None
    }
}

struct File {
    bytes: Vec<u8>,
    meta: HashMap<String, String>,
}

impl File {
    fn open(name: &str) -> Option<File> {
        let bytes = std::fs::read(dir()?.join(name)).unwrap();
        let (_, m) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = m.metadata().clone().unwrap_or_default();
        Some(File { bytes, meta })
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    fn shape(&self, name: &str) -> Vec<usize> {
        self.st().tensor(name).unwrap().shape().to_vec()
    }
    fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap();
        match t.dtype() {
            Dtype::F32 => t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::BF16 => t.data().chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            d => panic!("{name}: dtype {d:?}"),
        }
    }
    fn bf16(&self, name: &str) -> Vec<bf16> {
        let st = self.st();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::BF16, "{name}");
        t.data().chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]])).collect()
    }
    fn usize(&self, name: &str) -> Vec<usize> {
        let st = self.st();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64);
        t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize).collect()
    }
    fn params(&self, dims: &ModelDims) -> DeltaParams {
        let mut p = DeltaParams::new(dims);
        if let Some(s) = self.meta.get("scale") {
            p.scale = s.parse().unwrap();
        }
        if let Some(n) = self.meta.get("use_qk_l2norm") {
            p.use_qk_l2norm = n == "true";
        }
        p
    }
    fn mapping(&self) -> HeadMapping {
        self.meta.get("head_mapping").and_then(|m| HeadMapping::parse(m)).unwrap_or_default()
    }
}

fn delta_file<L: StateLayout>(name: &str) {
    let Some(f) = File::open(name) else { return };
    let (qs, vs) = (f.shape("q"), f.shape("v"));
    let (t, hk, k, hv, v) = (qs[0], qs[1], qs[2], vs[1], vs[2]);
    let dims = ModelDims::new(hk, hv, k, v, 4).unwrap().with_head_mapping(f.mapping());
    let params = f.params(&dims);
    let cu = f.usize("cu_seqlens");
    let n = cu.len() - 1;
    let d = CpuDispatcher::<L>::new();
    let mut pool = d.new_pool(PoolConfig::new(1, n, dims)).unwrap();
    let slots = pool.alloc(n).unwrap();
    let init = f.has("initial_state");
    if init {
        let s0 = f.f32("initial_state");
        let per = dims.state_elems();
        for (i, s) in slots.iter().enumerate() {
            let st = HostState::from_f32(1, dims, DType::F32, DType::F32, &s0[i * per..(i + 1) * per], &vec![0.0; dims.conv_elems()]);
            pool.import(*s, &st.unwrap()).unwrap();
        }
    }
    let batch = ExtendBatch::new(&pool, &cu, &slots, &vec![init; n]).unwrap();
    let g = f.f32("g");
    let mut o = vec![0f32; t * hv * v];
    let bf = f.st().tensor("q").unwrap().dtype() == Dtype::BF16;
    let (qb, kb, vb, bb) = if bf { (f.bf16("q"), f.bf16("k"), f.bf16("v"), f.bf16("beta")) } else { Default::default() };
    let (qf, kf, vf, bfl) = if bf { Default::default() } else { (f.f32("q"), f.f32("k"), f.f32("v"), f.f32("beta")) };
    fn view<'a>(bf: bool, x32: &'a [f32], x16: &'a [bf16], shape: &[usize]) -> TensorRef<'a> {
        if bf {
            TensorRef::from_slice(x16, shape).unwrap()
        } else {
            TensorRef::from_slice(x32, shape).unwrap()
        }
    }
    let io = DeltaIo {
        q: view(bf, &qf, &qb, &[t, hk, k]),
        k: view(bf, &kf, &kb, &[t, hk, k]),
        v: view(bf, &vf, &vb, &[t, hv, v]),
        g: TensorRef::from_slice(&g, &[t, hv]).unwrap(),
        beta: view(bf, &bfl, &bb, &[t, hv]),
        o: TensorMut::from_slice(&mut o, &[t, hv, v]).unwrap(),
        params,
    };
    d.extend(&mut pool, 0, &batch, io).unwrap();
    let fin: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect();
    let to64 = |x: Vec<f32>| x.into_iter().map(f64::from).collect::<Vec<_>>();
    let (eo, ef) = (error_ratio(&o, &to64(f.f32("expected_o"))), error_ratio(&fin, &to64(f.f32("expected_final_state"))));
    println!("{name} {:?}: o {eo:.2e} state {ef:.2e}", L::KIND);
    assert!(eo <= tolerance::REFERENCE && ef <= tolerance::REFERENCE, "{name} {:?}: o {eo:e} state {ef:e}", L::KIND);
}

#[test]
fn golden_delta_rule_files() {
    for name in ["gdn_f32_varlen.safetensors", "gdn_f32_noinit.safetensors", "gdn_f32_tiled.safetensors", "gdn_bf16.safetensors"] {
        delta_file::<KMajor>(name);
        delta_file::<VMajor>(name);
    }
}

fn layer_file<L: StateLayout>() {
    let Some(f) = File::open("layer_f32.safetensors") else { return };
    let (x, a) = (f.f32("mixed_qkv"), f.f32("a"));
    let (t, hv) = (f.shape("a")[0], f.shape("a")[1]);
    let s0 = f.shape("initial_state");
    let (k, v) = (s0[2], s0[3]);
    let cw = f.shape("conv_weight");
    let (conv_dim, w) = (cw[0], cw[1]);
    let hk = (conv_dim - hv * v) / (2 * k);
    let dims = ModelDims::new(hk, hv, k, v, w).unwrap().with_head_mapping(f.mapping());
    let params = f.params(&dims);
    let cu = f.usize("cu_seqlens");
    let n = cu.len() - 1;
    let d = CpuDispatcher::<L>::new();
    let mut pool = d.new_pool(PoolConfig::new(1, n, dims)).unwrap();
    let slots = pool.alloc(n).unwrap();
    let (init, conv0) = (f.f32("initial_state"), f.f32("conv_state"));
    let (per, cper) = (dims.state_elems(), dims.conv_elems());
    for (i, s) in slots.iter().enumerate() {
        let st = HostState::from_f32(1, dims, DType::F32, DType::F32, &init[i * per..(i + 1) * per], &conv0[i * cper..(i + 1) * cper]);
        pool.import(*s, &st.unwrap()).unwrap();
    }
    let batch = ExtendBatch::new(&pool, &cu, &slots, &vec![true; n]).unwrap();
    let (b, al, db, cwt) = (f.f32("b"), f.f32("A_log"), f.f32("dt_bias"), f.f32("conv_weight"));
    let weights = LayerWeights {
        a_log: TensorRef::from_slice(&al, &[hv]).unwrap(),
        dt_bias: TensorRef::from_slice(&db, &[hv]).unwrap(),
        conv_weight: TensorRef::from_slice(&cwt, &[conv_dim, w]).unwrap(),
        conv_bias: None,
    };
    let input = LayerInput {
        mixed_qkv: TensorRef::from_slice(&x, &[t, conv_dim]).unwrap(),
        a: TensorRef::from_slice(&a, &[t, hv]).unwrap(),
        b: TensorRef::from_slice(&b, &[t, hv]).unwrap(),
    };
    let mut o = vec![0f32; t * hv * v];
    let mut ws = LayerWorkspace::new(HostMemory);
    let out = TensorMut::from_slice(&mut o, &[t, hv, v]).unwrap();
    forward_extend(&d, &mut pool, 0, &batch, &weights, &input, params, &mut ws, out).unwrap();
    let fin: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect();
    let conv: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().conv_f32()).collect();
    let to64 = |x: Vec<f32>| x.into_iter().map(f64::from).collect::<Vec<_>>();
    let eo = error_ratio(&o, &to64(f.f32("expected_o")));
    let ef = error_ratio(&fin, &to64(f.f32("expected_final_state")));
    let ec = error_ratio(&conv, &to64(f.f32("expected_conv_state_out")));
    println!("layer_f32 {:?}: o {eo:.2e} state {ef:.2e} conv {ec:.2e}", L::KIND);
    assert!(eo <= tolerance::REFERENCE && ef <= tolerance::REFERENCE, "layer {:?}: o {eo:e} state {ef:e}", L::KIND);
    assert_eq!(ec, 0.0, "the conv state is the last W-1 raw inputs, exactly");
}

#[test]
fn golden_layer_forward() {
    layer_file::<KMajor>();
    layer_file::<VMajor>();
}
