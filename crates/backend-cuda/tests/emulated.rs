//! The CUDA backend's host logic and kernels, run in the CPU emulation of the
//! CUDA execution model, through the whole conformance suite (DESIGN §5) and
//! against the f64 oracle. `cargo test -p deltanet-backend-cuda --features emulate`.
//! The long cases (4096 and 1000 tokens) are included; `DELTANET_CONFORMANCE_*`
//! variables replay or narrow a run as for any backend.
#![cfg(feature = "emulate")]

use deltanet_backend_cuda::{CudaDispatcher, EmuLauncher};
use deltanet_conformance::{assert_check, Check, SuiteOptions};

fn make() -> CudaDispatcher<EmuLauncher> {
    CudaDispatcher::emulated()
}

fn opts() -> SuiteOptions {
    SuiteOptions::from_env()
}

macro_rules! checks {
    ($($name:ident => $check:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                assert_check(Check::$check, &make, &opts());
            }
        )*
    };
}

checks! {
    extend_vs_oracle => ExtendOracle,
    split_extend => SplitExtend,
    extend_then_decode => ExtendDecode,
    verify_commit => VerifyCommit,
    batch_invariance => BatchInvariance,
    determinism => Determinism,
    layout_round_trip => LayoutRoundTrip,
    dtypes => DTypes,
    strides => Strides,
    bad_input => BadInput,
    layer_forward => LayerForward,
}

mod tensor_cores {
    //! The tensor-core extend (`dnk_extend_tc`) forced for every input dtype:
    //! the whole conformance suite again (short cases), with f32 and f16 inputs held to
    //! [`TF32`] (tf32 operands keep 10 mantissa bits, as f16 does, and the
    //! intermediates W, U, V' and S are rounded to them at every product),
    //! and the two extend kernels against each other. bf16 inputs with a bf16
    //! state take the tensor cores by default, so the main suite runs those there too.
    use super::block_size::{run_on, Staged};
    use deltanet_backend_cuda::{CudaDispatcher, EmuLauncher, ExtendPath};
    use deltanet_conformance::{assert_check, Check, DeltaInputs, SuiteOptions};
    use deltanet_core::oracle::error_ratio;
    use deltanet_core::{tolerance, DType, DeltaParams, ExtendBatch, KernelDispatcher, MambaStatePool, ModelDims, PoolConfig};

    /// Error ratio allowed with tf32 operands (f32 or f16 inputs on tensor cores).
    const TF32: f64 = 5e-3;

    fn make() -> CudaDispatcher<EmuLauncher> {
        CudaDispatcher::emulated().with_extend_path(ExtendPath::TensorCore)
    }

    fn opts() -> SuiteOptions {
        // without the long cases (4096 and 1000 tokens), which the main suite runs (bf16 inputs
        // on the tensor cores there): every mma is a warp barrier in the emulation
        SuiteOptions { f32_tol: TF32, f32_long_tol: TF32, f16_tol: TF32, long: false, ..SuiteOptions::from_env() }
    }

    macro_rules! checks {
        ($($name:ident => $check:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    assert_check(Check::$check, &make, &opts());
                }
            )*
        };
    }

    checks! {
        extend_vs_oracle => ExtendOracle,
        split_extend => SplitExtend,
        extend_then_decode => ExtendDecode,
        verify_commit => VerifyCommit,
        batch_invariance => BatchInvariance,
        determinism => Determinism,
        dtypes => DTypes,
        strides => Strides,
        bad_input => BadInput,
        layer_forward => LayerForward,
    }

    #[test]
    fn tensor_core_and_portable_extend_agree() {
        let portable = CudaDispatcher::emulated().with_extend_path(ExtendPath::Portable);
        for (sd, dt, tol) in
            [(DType::F32, DType::BF16, tolerance::BF16), (DType::F32, DType::F32, TF32), (DType::BF16, DType::F16, tolerance::BF16)]
        {
            let (want, _) = run_on(&portable, sd, dt);
            let (got, _) = run_on(&make(), sd, dt);
            let err = error_ratio(&got, &want.iter().map(|&x| x as f64).collect::<Vec<_>>());
            assert!(err <= tol, "state {sd}, inputs {dt}: tensor-core vs portable error {err:.3e} > {tol:.1e}");
            assert!(err > 0.0, "state {sd}, inputs {dt}: the two paths gave identical bits (did both run the same kernel?)");
        }
    }

    #[test]
    fn long_bf16_sequences_at_qwen_head_dims_match_the_oracle() {
        // the conformance suite's long cases run f32 inputs: 1000 tokens of bf16 inputs on the
        // tensor cores (f32 state), K = V = 128, beside a 130-token one
        let dims = ModelDims::new(1, 2, 128, 128, 4).unwrap();
        let params = DeltaParams::new(&dims);
        let d = CudaDispatcher::emulated().with_extend_path(ExtendPath::TensorCore);
        let mut pool = d.new_pool(PoolConfig::new(1, 2, dims)).unwrap();
        let slots = pool.alloc(2).unwrap();
        let cu = [0, 1000, 1130];
        let inp = DeltaInputs::random(&dims, cu[2], DType::BF16, 0x1006);
        let mut s = Staged::new(&inp, DType::BF16);
        let batch = ExtendBatch::new(&pool, &cu, &slots, &[false, false]).unwrap();
        d.extend(&mut pool, 0, &batch, s.io(params)).unwrap();
        let r = inp.oracle(&params, &cu, None);
        let err = error_ratio(&s.out(), &r.o);
        assert!(err <= tolerance::BF16, "outputs: error {err:.3e}");
        let states: Vec<f32> = slots.iter().flat_map(|&sl| pool.export(sl).unwrap().temporal_f32()).collect();
        let err = error_ratio(&states, &r.final_state);
        assert!(err <= tolerance::BF16, "final states: error {err:.3e}");
    }

    #[test]
    fn auto_takes_tensor_cores_for_bf16_inputs_and_state_only() {
        let auto = CudaDispatcher::emulated();
        for (sd, dt, path) in [
            (DType::BF16, DType::BF16, ExtendPath::TensorCore),
            (DType::F32, DType::BF16, ExtendPath::Portable),
            (DType::BF16, DType::F32, ExtendPath::Portable),
            (DType::BF16, DType::F16, ExtendPath::Portable),
        ] {
            let want = run_on(&CudaDispatcher::emulated().with_extend_path(path), sd, dt);
            assert_eq!(run_on(&auto, sd, dt).1, want.1, "state {sd}, inputs {dt}: auto is not {path:?}");
        }
    }
}

mod conversions {
    //! The kernels' bit-operation conversions against the `half` crate, through `dnk_cast`.
    use super::make;
    use deltanet_core::{TensorMut, TensorRef};
    use half::{bf16, f16};
    use rand::{Rng, SeedableRng};

    fn same(a: f32, b: f32) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }

    #[test]
    fn every_f16_and_bf16_widens_exactly() {
        let d = make();
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let hs: Vec<f16> = all.iter().map(|&b| f16::from_bits(b)).collect();
        let bs: Vec<bf16> = all.iter().map(|&b| bf16::from_bits(b)).collect();
        let mut out = vec![0f32; all.len()];
        d.cast(TensorRef::from_slice(&hs, &[all.len()]).unwrap(), TensorMut::from_slice(&mut out, &[all.len()]).unwrap()).unwrap();
        for (h, o) in hs.iter().zip(&out) {
            assert!(same(h.to_f32(), *o), "f16 {:#06x}: {} vs {}", h.to_bits(), h.to_f32(), o);
        }
        d.cast(TensorRef::from_slice(&bs, &[all.len()]).unwrap(), TensorMut::from_slice(&mut out, &[all.len()]).unwrap()).unwrap();
        for (b, o) in bs.iter().zip(&out) {
            assert!(same(b.to_f32(), *o), "bf16 {:#06x}: {} vs {}", b.to_bits(), b.to_f32(), o);
        }
    }

    #[test]
    fn f32_narrows_with_round_to_nearest_even() {
        let d = make();
        let mut r = seeded_rng();
        // random bit patterns, plus values near every f16/bf16 rounding boundary and the edges
        let mut xs: Vec<f32> = (0..200_000).map(|_| f32::from_bits(r.gen())).collect();
        xs.extend((0..200_000).map(|_| r.gen_range(-70000.0f32..70000.0)));
        xs.extend((0..100_000).map(|_| r.gen_range(-1e-4f32..1e-4)));
        for b in (0..=u16::MAX).step_by(7) {
            let h = f16::from_bits(b).to_f32();
            let g = bf16::from_bits(b).to_f32();
            for x in [h, g] {
                xs.extend([x, f32::from_bits(x.to_bits().wrapping_add(1)), f32::from_bits(x.to_bits().wrapping_sub(1))]);
            }
        }
        xs.extend([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, -6e-8, 2.9802322e-8, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX]);
        let n = xs.len();
        let mut hs = vec![f16::ZERO; n];
        let mut bs = vec![bf16::ZERO; n];
        d.cast(TensorRef::from_slice(&xs, &[n]).unwrap(), TensorMut::from_slice(&mut hs, &[n]).unwrap()).unwrap();
        d.cast(TensorRef::from_slice(&xs, &[n]).unwrap(), TensorMut::from_slice(&mut bs, &[n]).unwrap()).unwrap();
        for i in 0..n {
            let (x, h, b) = (xs[i], hs[i], bs[i]);
            let (eh, eb) = (f16::from_f32(x), bf16::from_f32(x));
            assert!(
                h.to_bits() == eh.to_bits() || (h.is_nan() && eh.is_nan()),
                "f16({x:e}): {:#06x} vs {:#06x}",
                h.to_bits(),
                eh.to_bits()
            );
            assert!(
                b.to_bits() == eb.to_bits() || (b.is_nan() && eb.is_nan()),
                "bf16({x:e}): {:#06x} vs {:#06x}",
                b.to_bits(),
                eb.to_bits()
            );
        }
    }

    fn seeded_rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(0x0ddba11)
    }
}

mod block_size {
    //! Every kernel computes each output element with one thread in a fixed
    //! order, so the block size changes nothing, bit for bit; a missing barrier
    //! or a cross-thread race would show here as the interleavings change.
    use deltanet_backend_cuda::{CudaDispatcher, EmuLauncher};
    use deltanet_conformance::DeltaInputs;
    use deltanet_core::{
        CommitBatch, DType, DecodeBatch, DeltaIo, DeltaParams, Device, DeviceTensor, ExtendBatch, HostMemory, HostState, KernelDispatcher,
        MambaStatePool, ModelDims, PoolConfig, Snapshot, VerifyBatch,
    };

    /// q, k, v (in one dtype), g, beta (f32) and o of a batch, on host memory.
    pub(super) struct Staged {
        t: [DeviceTensor<HostMemory>; 6],
    }

    impl Staged {
        pub(super) fn new(inp: &DeltaInputs, dtype: DType) -> Staged {
            let d = &inp.dims;
            let (hk, hv, k, v, t) = (d.num_k_heads, d.num_v_heads, d.head_k_dim, d.head_v_dim, inp.tokens);
            let m = HostMemory;
            Staged {
                t: [
                    DeviceTensor::from_f32(&m, dtype, &[t, hk, k], &inp.q).unwrap(),
                    DeviceTensor::from_f32(&m, dtype, &[t, hk, k], &inp.k).unwrap(),
                    DeviceTensor::from_f32(&m, dtype, &[t, hv, v], &inp.v).unwrap(),
                    DeviceTensor::from_f32(&m, DType::F32, &[t, hv], &inp.g).unwrap(),
                    DeviceTensor::from_f32(&m, DType::F32, &[t, hv], &inp.beta).unwrap(),
                    DeviceTensor::zeros(&m, dtype, &[t, hv, v]).unwrap(),
                ],
            }
        }
        pub(super) fn io(&mut self, params: DeltaParams) -> DeltaIo<'_> {
            let [q, k, v, g, b, o] = &mut self.t;
            DeltaIo { q: q.view(), k: k.view(), v: v.view(), g: g.view(), beta: b.view(), o: o.view_mut(), params }
        }
        pub(super) fn out(&self) -> Vec<f32> {
            self.t[5].to_f32().unwrap()
        }
    }

    /// Extend (with a snapshot), decode, verify of a tree, commit: every output and every pool byte.
    fn run(threads: u32, state_dtype: DType, dtype: DType) -> (Vec<f32>, u64) {
        run_on(&CudaDispatcher::with_launcher(EmuLauncher::with_block_threads(threads), Device::Host), state_dtype, dtype)
    }

    pub(super) fn run_on(d: &CudaDispatcher<EmuLauncher>, state_dtype: DType, dtype: DType) -> (Vec<f32>, u64) {
        let dims = ModelDims::new(2, 4, 48, 40, 4).unwrap();
        let params = DeltaParams::new(&dims);
        let mut pool = d.new_pool(PoolConfig::new(1, 4, dims).with_state_dtype(state_dtype).with_speculative(3)).unwrap();
        let slots = pool.alloc(3).unwrap();
        let snap = pool.alloc(1).unwrap()[0];
        let init = DeltaInputs::random(&dims, 2, DType::F32, 7);
        for (i, &s) in slots.iter().enumerate() {
            let st: Vec<f32> = (0..dims.state_elems()).map(|j| init.q[(i * 31 + j) % init.q.len()] * 0.5).collect();
            let cv: Vec<f32> = (0..dims.conv_elems()).map(|j| init.v[(i * 17 + j) % init.v.len()]).collect();
            pool.import(s, &HostState::from_f32(1, dims, state_dtype, DType::F32, &st, &cv).unwrap()).unwrap();
        }
        let mut outs = Vec::new();
        let cu = [0, 130, 131, 200];
        let b = ExtendBatch::new(&pool, &cu, &slots, &[true, false, true])
            .unwrap()
            .with_snapshots(&pool, &[Snapshot { seq: 2, position: 33, slot: snap }])
            .unwrap();
        let mut s = Staged::new(&DeltaInputs::random(&dims, 200, dtype, 1), dtype);
        d.extend(&mut pool, 0, &b, s.io(params)).unwrap();
        outs.extend(s.out());
        let b = DecodeBatch::new(&pool, &slots).unwrap();
        let mut s = Staged::new(&DeltaInputs::random(&dims, 3, dtype, 2), dtype);
        d.decode(&mut pool, 0, &b, s.io(params)).unwrap();
        outs.extend(s.out());
        let b = VerifyBatch::tree(&pool, &slots, &[-1, 0, 0, -1, -1, 1, -1, 0, 1]).unwrap();
        let mut s = Staged::new(&DeltaInputs::random(&dims, 9, dtype, 3), dtype);
        d.verify(&mut pool, 0, &b, s.io(params)).unwrap();
        outs.extend(s.out());
        let c = CommitBatch::new(&pool, &slots, &[Some(2), Some(0), Some(1)], &[]).unwrap();
        d.commit(&mut pool, 0, &c).unwrap();
        (outs, pool.digest().unwrap())
    }

    #[test]
    fn results_do_not_depend_on_the_block_size() {
        for (sd, dt) in [(DType::F32, DType::F32), (DType::BF16, DType::BF16), (DType::F32, DType::F16)] {
            let (o32, d32) = run(32, sd, dt);
            assert!(o32.iter().all(|x| x.is_finite()) && o32.iter().any(|&x| x != 0.0));
            for threads in [96, 256] {
                let (o, dg) = run(threads, sd, dt);
                let diff = o.iter().zip(&o32).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(diff, 0, "{threads} threads vs 32, state {sd}, inputs {dt}: {diff} outputs differ");
                assert_eq!(dg, d32, "{threads} threads vs 32, state {sd}, inputs {dt}: pool bytes differ");
            }
        }
    }
}

mod conv_and_gate {
    //! The conv and gate kernels alone against the oracle, on conv widths and
    //! dtypes the conformance suite does not use (it runs W = 4).
    use super::make;
    use deltanet_core::oracle::{causal_conv1d, error_ratio, gate};
    use deltanet_core::{
        CommitBatch, ConvIo, DType, DecodeBatch, DeviceTensor, ExtendBatch, GateIo, HostMemory, HostState, KernelAccess, KernelDispatcher,
        MambaStatePool, ModelDims, PoolConfig, Slot, Snapshot, TensorMeta, VerifyBatch,
    };
    use rand::{Rng, SeedableRng};

    fn rnd(r: &mut rand::rngs::StdRng, n: usize, dt: DType) -> Vec<f32> {
        (0..n).map(|_| dt.round(r.gen_range(-1.0f32..1.0))).collect()
    }

    fn conv_state(pool: &impl MambaStatePool, s: Slot) -> Vec<f32> {
        pool.export(s).unwrap().conv_f32()
    }

    fn exact(a: &[f32], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| *x as f64 == *y)
    }

    #[test]
    fn conv_extend_update_verify_commit_match_the_oracle_for_several_widths() {
        let d = make();
        let m = HostMemory;
        for (w, conv_dt, x_dt) in
            [(2usize, DType::F32, DType::F32), (3, DType::BF16, DType::BF16), (6, DType::F16, DType::F16), (8, DType::F32, DType::BF16)]
        {
            let mut r = rand::rngs::StdRng::seed_from_u64(w as u64 * 1000 + 7);
            let dims = ModelDims::new(1, 2, 8, 8, w).unwrap();
            let c = dims.conv_dim();
            let mut pool = d.new_pool(PoolConfig::new(1, 4, dims).with_conv_dtype(conv_dt).with_speculative(3)).unwrap();
            let slots = pool.alloc(3).unwrap();
            let snap = pool.alloc(1).unwrap()[0];
            let mut init_conv = Vec::new();
            for &s in &slots {
                let cv = rnd(&mut r, dims.conv_elems(), conv_dt);
                pool.import(s, &HostState::from_f32(1, dims, DType::F32, conv_dt, &vec![0.0; dims.state_elems()], &cv).unwrap()).unwrap();
                init_conv.extend(cv);
            }
            let weight = rnd(&mut r, c * w, DType::F32);
            let bias = rnd(&mut r, c, DType::F32);
            let wt = DeviceTensor::from_f32(&m, DType::F32, &[c, w], &weight).unwrap();
            let bt = DeviceTensor::from_f32(&m, DType::F32, &[c], &bias).unwrap();
            let tol = if x_dt == DType::F32 { deltanet_core::tolerance::F32_ELEMENTWISE } else { deltanet_core::tolerance::BF16 };
            let case = format!("W={w} conv {conv_dt} x {x_dt}");

            // extend: three sequences, the middle one without initial state, a snapshot inside the last
            let cu = [0usize, 5, 6, 13];
            let init = [true, false, true];
            let x = rnd(&mut r, 13 * c, x_dt);
            let xt = DeviceTensor::from_f32(&m, x_dt, &[13, c], &x).unwrap();
            let mut out = DeviceTensor::zeros(&m, x_dt, &[13, c]).unwrap();
            let b = ExtendBatch::new(&pool, &cu, &slots, &init)
                .unwrap()
                .with_snapshots(&pool, &[Snapshot { seq: 2, position: 3, slot: snap }])
                .unwrap();
            let per = dims.conv_elems();
            let mut st0 = init_conv.clone();
            st0[per..2 * per].fill(0.0);
            d.conv_extend(&mut pool, 0, &b, ConvIo { x: xt.view(), weight: wt.view(), bias: Some(bt.view()), out: out.view_mut() })
                .unwrap();
            let want = causal_conv1d(&x, &weight, Some(&bias), c, w, &cu, Some(&st0));
            let e = error_ratio(&out.to_f32().unwrap(), &want.out);
            assert!(e <= tol, "{case}: extend outputs {e:e}");
            for (i, &s) in slots.iter().enumerate() {
                assert!(exact(&conv_state(&pool, s), &want.conv_state[i * per..(i + 1) * per]), "{case}: conv state of seq {i}");
            }
            let part = causal_conv1d(&x[6 * c..9 * c], &weight, Some(&bias), c, w, &[0, 3], Some(&st0[2 * per..3 * per]));
            assert!(exact(&conv_state(&pool, snap), &part.conv_state), "{case}: snapshot");

            // update: one token per request
            let before: Vec<f32> = slots.iter().flat_map(|&s| conv_state(&pool, s)).collect();
            let x = rnd(&mut r, 3 * c, x_dt);
            let xt = DeviceTensor::from_f32(&m, x_dt, &[3, c], &x).unwrap();
            let mut out = DeviceTensor::zeros(&m, x_dt, &[3, c]).unwrap();
            let b = DecodeBatch::new(&pool, &slots).unwrap();
            d.conv_update(&mut pool, 0, &b, ConvIo { x: xt.view(), weight: wt.view(), bias: None, out: out.view_mut() }).unwrap();
            let want = causal_conv1d(&x, &weight, None, c, w, &[0, 1, 2, 3], Some(&before));
            let e = error_ratio(&out.to_f32().unwrap(), &want.out);
            assert!(e <= tol, "{case}: update outputs {e:e}");
            let after: Vec<f32> = slots.iter().flat_map(|&s| conv_state(&pool, s)).collect();
            assert!(exact(&after, &want.conv_state), "{case}: update state");

            // verify a tree (parents per request), then commit one accepted step each
            let parents = [-1i64, 0, 0, -1, -1, 1, -1, 0, 1];
            let x = rnd(&mut r, 9 * c, x_dt);
            let xt = DeviceTensor::from_f32(&m, x_dt, &[9, c], &x).unwrap();
            let mut out = DeviceTensor::zeros(&m, x_dt, &[9, c]).unwrap();
            let b = VerifyBatch::tree(&pool, &slots, &parents).unwrap();
            d.conv_verify(&mut pool, 0, &b, ConvIo { x: xt.view(), weight: wt.view(), bias: Some(bt.view()), out: out.view_mut() })
                .unwrap();
            let out = out.to_f32().unwrap();
            assert!(
                exact(
                    &slots.iter().flat_map(|&s| conv_state(&pool, s)).collect::<Vec<_>>(),
                    &after.iter().map(|&v| v as f64).collect::<Vec<_>>()
                ),
                "{case}: verify touched the conv state"
            );
            // Only the conv windows are under test: claim the recurrent scratch's
            // verify as current (a commit needs one) without running the delta rule.
            pool.kernel_parts(0, KernelAccess::Verify(&b), |_| Ok(())).unwrap();
            let accepted = [2usize, 1, 2];
            for i in 0..3 {
                for t in 0..3 {
                    // the path root..t of request i
                    let mut path = vec![t];
                    while let Some(&p) = path.last().map(|&s| &parents[i * 3 + s]) {
                        if p < 0 {
                            break;
                        }
                        path.push(p as usize);
                    }
                    path.reverse();
                    let xs: Vec<f32> = path.iter().flat_map(|&s| x[(i * 3 + s) * c..(i * 3 + s + 1) * c].iter().copied()).collect();
                    let want = causal_conv1d(&xs, &weight, Some(&bias), c, w, &[0, path.len()], Some(&after[i * per..(i + 1) * per]));
                    let got = &out[(i * 3 + t) * c..(i * 3 + t + 1) * c];
                    let e = error_ratio(got, &want.out[(path.len() - 1) * c..]);
                    assert!(e <= tol, "{case}: verify request {i} step {t}: {e:e}");
                    if accepted[i] == t {
                        let c_b = CommitBatch::new(&pool, &[slots[i]], &[Some(t)], &[]).unwrap();
                        d.commit(&mut pool, 0, &c_b).unwrap();
                        assert!(exact(&conv_state(&pool, slots[i]), &want.conv_state), "{case}: committed window of request {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn gate_matches_the_oracle_with_strided_half_inputs() {
        let d = make();
        let (t, hv, pad) = (37usize, 6usize, 3usize);
        let mut r = rand::rngs::StdRng::seed_from_u64(99);
        let dims = ModelDims::new(2, hv, 8, 8, 4).unwrap();
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let a: Vec<f32> = (0..t * hv).map(|_| dt.round(r.gen_range(-30.0f32..30.0))).collect();
            let b: Vec<f32> = (0..t * hv).map(|_| dt.round(r.gen_range(-8.0f32..8.0))).collect();
            let a_log: Vec<f32> = (0..hv).map(|_| r.gen_range(-2.0f32..1.0)).collect();
            let dt_bias: Vec<f32> = (0..hv).map(|_| r.gen_range(-1.0f32..1.0)).collect();
            let padded =
                |x: &[f32]| -> Vec<f32> { (0..t).flat_map(|i| x[i * hv..(i + 1) * hv].iter().copied().chain([f32::NAN; 3])).collect() };
            let m = HostMemory;
            let at = DeviceTensor::from_f32(&m, dt, &[t, hv + pad], &padded(&a)).unwrap();
            let btn = DeviceTensor::from_f32(&m, dt, &[t, hv + pad], &padded(&b)).unwrap();
            let alt = DeviceTensor::from_f32(&m, DType::F32, &[hv], &a_log).unwrap();
            let dbt = DeviceTensor::from_f32(&m, DType::F32, &[hv], &dt_bias).unwrap();
            let mut g = DeviceTensor::zeros(&m, DType::F32, &[t, hv]).unwrap();
            let mut beta = DeviceTensor::zeros(&m, DType::F32, &[t, hv]).unwrap();
            let strided = TensorMeta::strided(deltanet_core::Device::Host, dt, &[t, hv], &[hv + pad, 1]).unwrap();
            let av = at.view().restride(0, strided.shape(), strided.strides()).unwrap();
            let bv = btn.view().restride(0, strided.shape(), strided.strides()).unwrap();
            d.gate(&dims, GateIo { a: av, b: bv, a_log: alt.view(), dt_bias: dbt.view(), g: g.view_mut(), beta: beta.view_mut() }).unwrap();
            let (wg, wb) = gate(&a, &b, &a_log, &dt_bias);
            let (eg, eb) = (error_ratio(&g.to_f32().unwrap(), &wg), error_ratio(&beta.to_f32().unwrap(), &wb));
            assert!(
                eg <= deltanet_core::tolerance::F32_ELEMENTWISE && eb <= deltanet_core::tolerance::F32_ELEMENTWISE,
                "{dt}: g {eg:e}, beta {eb:e}"
            );
        }
    }
}

mod extreme_gates {
    //! Decays far outside the suite's range (exp(g) from 1 down to e^-40 per
    //! token, cumulative sums underflowing f32 inside a chunk) and beta in
    //! {0, 1}: no NaN or overflow in the chunked form, and extend agrees with
    //! the oracle and with token-by-token decode.
    use super::make;
    use deltanet_conformance::DeltaInputs;
    use deltanet_core::oracle::error_ratio;
    use deltanet_core::{
        DType, DecodeBatch, DeltaIo, DeltaParams, DeviceTensor, ExtendBatch, HostMemory, KernelDispatcher, MambaStatePool, ModelDims,
        PoolConfig,
    };

    #[test]
    fn strong_and_zero_decay() {
        let d = make();
        let m = HostMemory;
        let dims = ModelDims::new(1, 2, 32, 16, 4).unwrap();
        let params = DeltaParams::new(&dims);
        let t = 150;
        let mut inp = DeltaInputs::random(&dims, t, DType::F32, 42);
        for (i, g) in inp.g.iter_mut().enumerate() {
            *g = match i % 7 {
                0 => 0.0,
                1 => -40.0,
                2 => -12.5,
                3 => -1e-6,
                _ => *g * 10.0,
            };
        }
        for (i, b) in inp.beta.iter_mut().enumerate() {
            if i % 5 == 0 {
                *b = if i % 10 == 0 { 0.0 } else { 1.0 };
            }
        }
        let stage = |x: &DeltaInputs| {
            let (hk, hv, k, v, n) = (1, 2, 32, 16, x.tokens);
            [
                DeviceTensor::from_f32(&m, DType::F32, &[n, hk, k], &x.q).unwrap(),
                DeviceTensor::from_f32(&m, DType::F32, &[n, hk, k], &x.k).unwrap(),
                DeviceTensor::from_f32(&m, DType::F32, &[n, hv, v], &x.v).unwrap(),
                DeviceTensor::from_f32(&m, DType::F32, &[n, hv], &x.g).unwrap(),
                DeviceTensor::from_f32(&m, DType::F32, &[n, hv], &x.beta).unwrap(),
                DeviceTensor::zeros(&m, DType::F32, &[n, hv, v]).unwrap(),
            ]
        };
        // extend
        let mut pool = d.new_pool(PoolConfig::new(1, 2, dims)).unwrap();
        let s = pool.alloc(2).unwrap();
        let [q, k, v, g, b, mut o] = stage(&inp);
        let batch = ExtendBatch::new(&pool, &[0, t], &s[..1], &[false]).unwrap();
        d.extend(
            &mut pool,
            0,
            &batch,
            DeltaIo { q: q.view(), k: k.view(), v: v.view(), g: g.view(), beta: b.view(), o: o.view_mut(), params },
        )
        .unwrap();
        let o_ext = o.to_f32().unwrap();
        assert!(o_ext.iter().all(|x| x.is_finite()));
        let r = inp.oracle(&params, &[0, t], None);
        let e = error_ratio(&o_ext, &r.o);
        assert!(e <= deltanet_core::tolerance::F32_LONG, "extend vs oracle: {e:e}");
        let st = pool.export(s[0]).unwrap().temporal_f32();
        let e = error_ratio(&st, &r.final_state);
        assert!(e <= deltanet_core::tolerance::F32_LONG, "extend state vs oracle: {e:e}");
        // token-by-token decode on the second slot (zeroed)
        pool.zero(&s[1..]).unwrap();
        let mut o_dec = Vec::new();
        for i in 0..t {
            let [q, k, v, g, b, mut o] = stage(&inp.slice(i..i + 1));
            let batch = DecodeBatch::new(&pool, &s[1..]).unwrap();
            d.decode(
                &mut pool,
                0,
                &batch,
                DeltaIo { q: q.view(), k: k.view(), v: v.view(), g: g.view(), beta: b.view(), o: o.view_mut(), params },
            )
            .unwrap();
            o_dec.extend(o.to_f32().unwrap());
        }
        let e = error_ratio(&o_dec, &r.o);
        assert!(e <= deltanet_core::tolerance::F32_LONG, "decode vs oracle: {e:e}");
    }
}

mod bounded_workspace {
    //! With a workspace for one sequence at a time, the extend blocks take the
    //! sequences in turns: the whole extend check still passes, and the results
    //! are bitwise those of the unbounded run.
    use super::opts;
    use deltanet_backend_cuda::CudaDispatcher;
    use deltanet_conformance::{assert_check, Check};
    use deltanet_core::DType;

    #[test]
    fn extend_with_one_sequence_of_workspace() {
        assert_check(Check::ExtendOracle, &|| CudaDispatcher::emulated().with_extend_workspace_budget(1), &opts());
        assert_check(Check::BatchInvariance, &|| CudaDispatcher::emulated().with_extend_workspace_budget(1), &opts());
        for (sd, dt) in [(DType::F32, DType::F32), (DType::BF16, DType::BF16)] {
            let a = super::block_size::run_on(&CudaDispatcher::emulated(), sd, dt);
            let b = super::block_size::run_on(&CudaDispatcher::emulated().with_extend_workspace_budget(1), sd, dt);
            assert!(a.0.iter().zip(&b.0).all(|(x, y)| x.to_bits() == y.to_bits()) && a.1 == b.1, "bounded workspace changed results");
        }
    }
}

mod non_finite {
    //! Issue 10 item 6 on the CUDA kernel: a non-finite input at token t of a
    //! chunked extend leaves the outputs of tokens < t as the token-by-token
    //! oracle gives them; with the pool's finite check, the call is refused.
    use super::make;
    use deltanet_conformance::DeltaInputs;
    use deltanet_core::oracle::error_ratio;
    use deltanet_core::{
        DType, DeltaIo, DeltaParams, Error, ExtendBatch, KernelDispatcher, MambaStatePool, ModelDims, PoolConfig, TensorMut, TensorRef,
    };

    const T: usize = 130;
    const BAD: usize = 100;

    fn run(x: &DeltaInputs, check: bool) -> (Result<(), Error>, Vec<f32>, u64, u64) {
        let d = make();
        let m = x.dims;
        let cfg = PoolConfig::new(1, 1, m);
        let mut pool = d.new_pool(if check { cfg.with_finite_check() } else { cfg }).unwrap();
        let s = pool.alloc(1).unwrap();
        let before = pool.digest().unwrap();
        let b = ExtendBatch::new(&pool, &[0, T], &s, &[false]).unwrap();
        let mut o = vec![0f32; T * m.num_v_heads * m.head_v_dim];
        let io = DeltaIo {
            q: TensorRef::from_slice(&x.q, &[T, m.num_k_heads, m.head_k_dim]).unwrap(),
            k: TensorRef::from_slice(&x.k, &[T, m.num_k_heads, m.head_k_dim]).unwrap(),
            v: TensorRef::from_slice(&x.v, &[T, m.num_v_heads, m.head_v_dim]).unwrap(),
            g: TensorRef::from_slice(&x.g, &[T, m.num_v_heads]).unwrap(),
            beta: TensorRef::from_slice(&x.beta, &[T, m.num_v_heads]).unwrap(),
            o: TensorMut::from_slice(&mut o, &[T, m.num_v_heads, m.head_v_dim]).unwrap(),
            params: DeltaParams::new(&m),
        };
        let r = d.extend(&mut pool, 0, &b, io);
        (r, o, before, pool.digest().unwrap())
    }

    #[test]
    fn a_non_finite_input_never_reaches_earlier_tokens() {
        let m = ModelDims::new(1, 2, 16, 8, 4).unwrap();
        let per_o = m.num_v_heads * m.head_v_dim;
        for what in ["g", "v", "beta"] {
            let mut x = DeltaInputs::random(&m, T, DType::F32, 21);
            match what {
                "g" => x.g[BAD * 2 + 1] = f32::NAN,
                "v" => x.v[(BAD * 2 + 1) * 8 + 3] = f32::NAN,
                _ => x.beta[BAD * 2] = f32::INFINITY,
            }
            let (r, o, _, _) = run(&x, false);
            r.unwrap();
            assert!(o[..BAD * per_o].iter().all(|v| v.is_finite()), "{what}: an earlier token is non-finite");
            let want = x.oracle(&DeltaParams::new(&m), &[0, T], None);
            let e = error_ratio(&o[..BAD * per_o], &want.o[..BAD * per_o]);
            assert!(e <= deltanet_core::tolerance::F32, "{what}: earlier tokens vs the oracle {e:e}");
            let (r, o2, before, after) = run(&x, true);
            assert_eq!(r, Err(Error::NonFinite { seq: 0, token: BAD, what: format!("input `{what}`") }));
            assert_eq!(before, after, "{what}: refused extend changed the pool");
            assert!(o2.iter().all(|&v| v == 0.0), "{what}: refused extend wrote outputs");
        }
    }
}
