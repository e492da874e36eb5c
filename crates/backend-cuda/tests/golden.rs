//! The CUDA kernels (in the CPU emulation) against /work/shared/golden: fla's
//! and transformers' outputs on fixed inputs, ratio <= 1e-5. The layer file
//! runs conv + gate + delta rule through `deltanet_core::forward_extend`.
//! Skipped (with a message) when the golden directory is absent
//! (`DELTANET_GOLDEN_DIR` overrides its place).
#![cfg(feature = "emulate")]

use deltanet_backend_cuda::CudaDispatcher;
use deltanet_core::oracle::error_ratio;
use deltanet_core::{
    forward_extend, DType, DeltaIo, DeltaParams, DeviceTensor, ExtendBatch, HeadMapping, HostMemory, HostState, KernelDispatcher,
    LayerInput, LayerWeights, LayerWorkspace, MambaStatePool, ModelDims, PoolConfig,
};
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

struct Golden {
    bytes: Vec<u8>,
    meta: std::collections::HashMap<String, String>,
}

impl Golden {
    fn open(name: &str) -> Option<Golden> {
        let dir = std::env::var_os("DELTANET_GOLDEN_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/work/shared/golden"));
        let Ok(bytes) = std::fs::read(dir.join(name)) else {
            println!("skipped: no {name} in {}", dir.display());
            return None;
        };
        let meta = SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap_or_default();
        Some(Golden { bytes, meta })
    }
    fn tensor(&self, name: &str) -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        st.tensor(name).ok().map(|t| (t.dtype(), t.shape().to_vec(), t.data().to_vec()))
    }
    fn shape(&self, name: &str) -> Vec<usize> {
        self.tensor(name).unwrap().1
    }
    fn dtype(&self, name: &str) -> DType {
        match self.tensor(name).unwrap().0 {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            d => panic!("{name}: {d:?}"),
        }
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let (dt, _, data) = self.tensor(name).unwrap();
        match dt {
            Dtype::F32 => DType::F32.decode_vec(&data),
            Dtype::BF16 => DType::BF16.decode_vec(&data),
            d => panic!("{name}: {d:?}"),
        }
    }
    fn indices(&self, name: &str) -> Vec<usize> {
        let (dt, _, data) = self.tensor(name).unwrap();
        assert_eq!(dt, Dtype::I64, "{name}");
        data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize).collect()
    }
    fn dims(&self, hk: usize, hv: usize, k: usize, v: usize, w: usize) -> (ModelDims, DeltaParams) {
        let mapping = self.meta.get("head_mapping").and_then(|m| HeadMapping::parse(m)).unwrap_or_default();
        let dims = ModelDims::new(hk, hv, k, v, w).unwrap().with_head_mapping(mapping);
        let mut p = DeltaParams::new(&dims);
        if let Some(s) = self.meta.get("scale") {
            p.scale = s.parse().unwrap();
        }
        if let Some(n) = self.meta.get("use_qk_l2norm") {
            p.use_qk_l2norm = n == "true";
        }
        (dims, p)
    }
}

fn f64s(x: Vec<f32>) -> Vec<f64> {
    x.into_iter().map(f64::from).collect()
}

#[test]
fn golden_delta_rule_files() {
    let d = CudaDispatcher::emulated();
    let m = HostMemory;
    for name in ["gdn_f32_varlen.safetensors", "gdn_f32_noinit.safetensors", "gdn_f32_tiled.safetensors", "gdn_bf16.safetensors"] {
        let Some(f) = Golden::open(name) else { continue };
        let (qs, vs) = (f.shape("q"), f.shape("v"));
        let (t, hk, k, hv, v) = (qs[0], qs[1], qs[2], vs[1], vs[2]);
        let (dims, params) = f.dims(hk, hv, k, v, 4);
        let cu = f.indices("cu_seqlens");
        let n = cu.len() - 1;
        let mut pool = d.new_pool(PoolConfig::new(1, n, dims)).unwrap();
        let slots = pool.alloc(n).unwrap();
        let init = f.tensor("initial_state").is_some();
        if init {
            let s0 = f.f32("initial_state");
            let per = dims.state_elems();
            for (i, s) in slots.iter().enumerate() {
                let st = HostState::from_f32(1, dims, DType::F32, DType::F32, &s0[i * per..(i + 1) * per], &vec![0.0; dims.conv_elems()]);
                pool.import(*s, &st.unwrap()).unwrap();
            }
        }
        let batch = ExtendBatch::new(&pool, &cu, &slots, &vec![init; n]).unwrap();
        let dt = f.dtype("q");
        let q = DeviceTensor::from_f32(&m, dt, &[t, hk, k], &f.f32("q")).unwrap();
        let kk = DeviceTensor::from_f32(&m, dt, &[t, hk, k], &f.f32("k")).unwrap();
        let vv = DeviceTensor::from_f32(&m, dt, &[t, hv, v], &f.f32("v")).unwrap();
        let g = DeviceTensor::from_f32(&m, DType::F32, &[t, hv], &f.f32("g")).unwrap();
        let beta = DeviceTensor::from_f32(&m, f.dtype("beta"), &[t, hv], &f.f32("beta")).unwrap();
        let mut o = DeviceTensor::zeros(&m, DType::F32, &[t, hv, v]).unwrap();
        let io = DeltaIo { q: q.view(), k: kk.view(), v: vv.view(), g: g.view(), beta: beta.view(), o: o.view_mut(), params };
        d.extend(&mut pool, 0, &batch, io).unwrap();
        let fin: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect();
        let eo = error_ratio(&o.to_f32().unwrap(), &f64s(f.f32("expected_o")));
        let ef = error_ratio(&fin, &f64s(f.f32("expected_final_state")));
        println!("{name}: o {eo:.2e} state {ef:.2e}");
        assert!(eo <= deltanet_core::tolerance::REFERENCE && ef <= deltanet_core::tolerance::REFERENCE, "{name}: o {eo:e} state {ef:e}");
    }
}

#[test]
fn golden_layer_forward() {
    let Some(f) = Golden::open("layer_f32.safetensors") else { return };
    let d = CudaDispatcher::emulated();
    let m = HostMemory;
    let (t, hv) = (f.shape("a")[0], f.shape("a")[1]);
    let s0 = f.shape("initial_state");
    let (k, v) = (s0[2], s0[3]);
    let cw = f.shape("conv_weight");
    let (conv_dim, w) = (cw[0], cw[1]);
    let hk = (conv_dim - hv * v) / (2 * k);
    let (dims, params) = f.dims(hk, hv, k, v, w);
    let cu = f.indices("cu_seqlens");
    let n = cu.len() - 1;
    let mut pool = d.new_pool(PoolConfig::new(1, n, dims)).unwrap();
    let slots = pool.alloc(n).unwrap();
    let (init, conv0) = (f.f32("initial_state"), f.f32("conv_state"));
    let (per, cper) = (dims.state_elems(), dims.conv_elems());
    for (i, s) in slots.iter().enumerate() {
        let st = HostState::from_f32(1, dims, DType::F32, DType::F32, &init[i * per..(i + 1) * per], &conv0[i * cper..(i + 1) * cper]);
        pool.import(*s, &st.unwrap()).unwrap();
    }
    let batch = ExtendBatch::new(&pool, &cu, &slots, &vec![true; n]).unwrap();
    let t32 = |name: &str, shape: &[usize]| DeviceTensor::from_f32(&m, DType::F32, shape, &f.f32(name)).unwrap();
    let (a_log, dt_bias, conv_w) = (t32("A_log", &[hv]), t32("dt_bias", &[hv]), t32("conv_weight", &[conv_dim, w]));
    let (x, a, b) = (t32("mixed_qkv", &[t, conv_dim]), t32("a", &[t, hv]), t32("b", &[t, hv]));
    let weights = LayerWeights { a_log: a_log.view(), dt_bias: dt_bias.view(), conv_weight: conv_w.view(), conv_bias: None };
    let input = LayerInput { mixed_qkv: x.view(), a: a.view(), b: b.view() };
    let mut o = DeviceTensor::zeros(&m, DType::F32, &[t, hv, v]).unwrap();
    let mut ws = LayerWorkspace::new(HostMemory);
    forward_extend(&d, &mut pool, 0, &batch, &weights, &input, params, &mut ws, o.view_mut()).unwrap();
    let fin: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().temporal_f32()).collect();
    let conv: Vec<f32> = slots.iter().flat_map(|s| pool.export(*s).unwrap().conv_f32()).collect();
    let eo = error_ratio(&o.to_f32().unwrap(), &f64s(f.f32("expected_o")));
    let ef = error_ratio(&fin, &f64s(f.f32("expected_final_state")));
    let ec = error_ratio(&conv, &f64s(f.f32("expected_conv_state_out")));
    println!("layer_f32: o {eo:.2e} state {ef:.2e} conv {ec:.2e}");
    assert!(eo <= deltanet_core::tolerance::REFERENCE && ef <= deltanet_core::tolerance::REFERENCE, "layer: o {eo:e} state {ef:e}");
    assert_eq!(ec, 0.0, "the conv state is the last W-1 raw inputs, exactly");
}
