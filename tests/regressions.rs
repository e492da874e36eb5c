//! One test per failure class of DESIGN §1 — the bugs serving engines
//! shipped around Gated DeltaNet state plumbing. Each shows the mistake is
//! caught: by the types (a compile error, see also
//! crates/core/tests/ui/vmajor_pool_to_kmajor_kernel.rs), by a typed error,
//! or by a conformance check that passes on the real CPU kernels and fails
//! once the mistake is injected into them through a delegating wrapper.

#![cfg(feature = "cpu")]

use deltanet_backend_cpu::{CpuKMajor, CpuVMajor};
use deltanet_conformance::{run_check, Check, SuiteOptions};
use deltanet_core::*;

/// The mistakes, as the engines made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mistake {
    /// The state handed from one prefill chunk to the next is in the wrong axis order.
    ChunkStateWrongAxisOrder,
    /// A decode kernel indexes the state as the other layout.
    DecodeReadsOtherLayout,
    /// Commit copies the scratch state into the pool as the other layout.
    CommitCopiesOtherLayout,
    /// Views are used as if contiguous, whatever their strides.
    StridesIgnored,
    /// The committed conv window is the one of step `a + 1` (offset by one).
    ConvWindowOffByAccepted,
    /// Prefix-cache snapshots are taken at the end of the chunk, not at their position.
    SnapshotFromWrongChunk,
}

/// A real dispatcher with one mistake injected around its kernels.
struct Faulty<D> {
    inner: D,
    mistake: Mistake,
}

/// Rewrites the recurrent state of `slot` in `layer` as if its K-major bytes
/// were read as V-major (`forward`) or the inverse.
fn reinterpret<P: MambaStatePool + ?Sized>(pool: &mut P, slot: Slot, layer: usize, forward: bool) -> Result<()> {
    let mut st = pool.export(slot)?;
    let (h, k, v) = (st.dims.num_v_heads, st.dims.head_k_dim, st.dims.head_v_dim);
    let es = st.state_dtype.size();
    let per = h * k * v * es;
    let part = st.temporal[layer * per..(layer + 1) * per].to_vec();
    for hh in 0..h {
        for kk in 0..k {
            for vv in 0..v {
                let (canon, other) = (hh * k * v + kk * v + vv, hh * k * v + vv * k + kk);
                let (dst, src) = if forward { (canon, other) } else { (other, canon) };
                st.temporal[layer * per + dst * es..layer * per + (dst + 1) * es].copy_from_slice(&part[src * es..(src + 1) * es]);
            }
        }
    }
    pool.import(slot, &st)
}

/// A view of the same address as if it were contiguous.
fn as_contiguous<'a>(t: TensorRef<'a>) -> Result<TensorRef<'a>> {
    let meta = TensorMeta::contiguous(t.meta().device(), t.meta().dtype(), t.meta().shape())?;
    // SAFETY: only used on the suite's padded inputs, whose buffers hold at least
    // numel elements from this address (each padded row is longer than a dense one).
    Ok(unsafe { TensorRef::from_raw(t.addr(), meta) })
}

impl<D: KernelDispatcher> Kernels for Faulty<D> {
    type Layout = D::Layout;
    type Memory = D::Memory;

    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn memory(&self) -> &D::Memory {
        self.inner.memory()
    }
    fn run_gate(&self, call: GateCall<'_>) -> Result<()> {
        self.inner.run_gate(call)
    }
    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        self.inner.run_conv_extend(pool, call)
    }
    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        self.inner.run_conv_update(pool, call)
    }
    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        self.inner.run_conv_verify(pool, call)
    }
    fn run_extend(&self, pool: &mut PoolOf<Self>, mut call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        let (layer, batch) = (call.layer(), call.batch());
        if self.mistake == Mistake::StridesIgnored {
            let io = call.io_mut();
            io.q = as_contiguous(io.q)?;
            io.k = as_contiguous(io.k)?;
            io.v = as_contiguous(io.v)?;
            io.g = as_contiguous(io.g)?;
            io.beta = as_contiguous(io.beta)?;
        }
        self.inner.run_extend(pool, call)?;
        match self.mistake {
            Mistake::ChunkStateWrongAxisOrder => {
                for &s in batch.slots() {
                    reinterpret(pool, s, layer, true)?;
                }
            }
            Mistake::SnapshotFromWrongChunk => {
                for sn in batch.snapshots() {
                    pool.copy(batch.slots()[sn.seq], sn.slot)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        if self.mistake != Mistake::DecodeReadsOtherLayout {
            return self.inner.run_decode(pool, call);
        }
        let (layer, batch) = (call.layer(), call.batch());
        for &s in batch.slots() {
            reinterpret(pool, s, layer, true)?;
        }
        self.inner.run_decode(pool, call)?;
        for &s in batch.slots() {
            reinterpret(pool, s, layer, false)?;
        }
        Ok(())
    }
    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        self.inner.run_verify(pool, call)
    }
    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        let (layer, batch) = (call.layer(), call.batch());
        match self.mistake {
            Mistake::CommitCopiesOtherLayout => {
                self.inner.run_commit(pool, call)?;
                for &s in batch.slots() {
                    reinterpret(pool, s, layer, true)?;
                }
                Ok(())
            }
            Mistake::ConvWindowOffByAccepted => {
                // the right state, the window of the next step
                self.inner.run_commit(pool, call)?;
                let right: Vec<HostState> = batch.slots().iter().map(|&s| pool.export(s)).collect::<Result<_>>()?;
                let d = pool.geometry().draft();
                let shifted: Vec<Option<usize>> = batch.accepted().iter().map(|a| a.map(|a| (a + 1) % d)).collect();
                // The first commit consumed the verify; this faulty backend claims it again
                // (the scratch still holds it) to copy the next step's window.
                let again = VerifyBatch::chain(pool, batch.slots())?;
                pool.kernel_parts(layer, KernelAccess::Verify(&again), |_| Ok(()))?;
                self.inner.commit(pool, layer, &CommitBatch::new(pool, batch.slots(), &shifted, &[])?)?;
                for (&s, r) in batch.slots().iter().zip(right) {
                    let mut wrong = pool.export(s)?;
                    wrong.temporal = r.temporal;
                    pool.import(s, &wrong)?;
                }
                Ok(())
            }
            _ => self.inner.run_commit(pool, call),
        }
    }
}

fn opts(only: Option<&str>) -> SuiteOptions {
    SuiteOptions { long: false, only: only.map(str::to_string), ..SuiteOptions::default() }
}

/// The check passes on the clean kernels and fails with the mistake injected.
fn caught<D: KernelDispatcher>(make: impl Fn() -> D, mistake: Mistake, check: Check, only: Option<&str>) -> Vec<String> {
    let o = opts(only);
    let clean = run_check(check, &make, &o);
    assert!(!clean.is_empty(), "no case ran");
    for c in &clean {
        assert!(c.passed, "the clean kernels fail {}: {c}", check.name());
    }
    let faulty = run_check(check, &|| Faulty { inner: make(), mistake }, &o);
    let failed: Vec<String> = faulty.iter().filter(|c| !c.passed).map(|c| c.to_string()).collect();
    assert!(!failed.is_empty(), "{mistake:?} went unnoticed by {}", check.name());
    for f in &failed {
        println!("caught: {f}");
    }
    failed
}

#[test]
fn prefill_chunk_state_in_wrong_axis_order() {
    // NPU Qwen3.5: the state handed from one prefill chunk to the next was transposed.
    for failed in [
        caught(CpuVMajor::new, Mistake::ChunkStateWrongAxisOrder, Check::SplitExtend, None),
        caught(CpuKMajor::new, Mistake::ChunkStateWrongAxisOrder, Check::SplitExtend, None),
    ] {
        assert!(failed.iter().any(|f| f.contains("split at [64, 128]")), "bitwise split case must catch it");
    }
    // and the fix (layout fixed at pool creation) leaves nothing to transpose: the
    // state between chunks is whatever layout the pool has, for either backend.
}

#[test]
fn decode_kernel_reading_kmajor_state_from_vmajor_pool() {
    // by the types: a K-major kernel does not accept a V-major pool (compile-fail
    // test in crates/core/tests/ui); at run time the facade returns LayoutMismatch
    let cfg = PoolConfig::new(1, 2, ModelDims::new(1, 2, 16, 32, 4).unwrap());
    let mut vpool = deltanet::Backend::cpu_vmajor().unwrap().new_pool(cfg).unwrap();
    let r = vpool.typed_mut::<deltanet::backend::CpuKMajorDispatcher>().map(|_| ());
    assert!(matches!(r, Err(Error::LayoutMismatch { expected: LayoutKind::KMajor, actual: LayoutKind::VMajor })), "{r:?}");
    let s = vpool.as_dyn().alloc(1).unwrap();
    let batch = DecodeBatch::new(vpool.as_dyn(), &s).unwrap();
    let d = cfg.dims;
    let (q, k, v) = (vec![0.5f32; 16], vec![0.25f32; 16], vec![1.0f32; 64]);
    let (g, beta) = (vec![-0.1f32; 2], vec![0.5f32; 2]);
    let mut o = vec![0.0f32; 64];
    let io = DeltaIo {
        q: TensorRef::from_slice(&q, &[1, 1, 16]).unwrap(),
        k: TensorRef::from_slice(&k, &[1, 1, 16]).unwrap(),
        v: TensorRef::from_slice(&v, &[1, 2, 32]).unwrap(),
        g: TensorRef::from_slice(&g, &[1, 2]).unwrap(),
        beta: TensorRef::from_slice(&beta, &[1, 2]).unwrap(),
        o: TensorMut::from_slice(&mut o, &[1, 2, 32]).unwrap(),
        params: DeltaParams::new(&d),
    };
    let before = vpool.as_dyn().digest().unwrap();
    let r = deltanet::Backend::cpu().unwrap().decode(&mut vpool, 0, &batch, io);
    assert!(matches!(r, Err(Error::LayoutMismatch { .. })), "{r:?}");
    assert_eq!(vpool.as_dyn().digest().unwrap(), before);
    // and a kernel that indexes the other layout anyway fails extend-then-decode,
    // including with K = V, where the mistake is otherwise silent
    caught(CpuVMajor::new, Mistake::DecodeReadsOtherLayout, Check::ExtendDecode, Some("hk1 hv1 k16 v16"));
    caught(CpuVMajor::new, Mistake::DecodeReadsOtherLayout, Check::ExtendDecode, None);
}

#[test]
fn commit_copying_scratch_into_pool_of_other_layout() {
    // scratch and main state are one pool, one layout; a commit that copies across
    // layouts is caught by verify+commit vs decoding
    let failed = caught(CpuKMajor::new, Mistake::CommitCopiesOtherLayout, Check::VerifyCommit, None);
    assert!(failed.iter().any(|f| f.contains("commit of step")));
    caught(CpuVMajor::new, Mistake::CommitCopiesOtherLayout, Check::VerifyCommit, None);
}

#[test]
fn bf16_only_kernel_fed_an_f32_pool() {
    // a backend that claims bf16 state only cannot get an f32 pool: typed error at creation
    let dims = ModelDims::new(1, 2, 16, 32, 4).unwrap();
    let mut caps = Capabilities::host_reference(LayoutKind::VMajor);
    caps.backend = "bf16-only".into();
    caps.state_dtypes = vec![DType::BF16];
    let r = StatePool::<HostMemory, VMajor>::new(HostMemory, PoolConfig::new(1, 2, dims), &caps);
    assert!(matches!(r, Err(Error::UnsupportedDType { dtype: DType::F32, .. })), "{r:?}");
    assert!(StatePool::<HostMemory, VMajor>::new(HostMemory, PoolConfig::new(1, 2, dims).with_state_dtype(DType::BF16), &caps).is_ok());
    // and the CPU backend, which claims both, meets each tolerance (bf16 5e-3)
    for c in run_check(Check::DTypes, &CpuVMajor::new, &opts(None)) {
        assert!(c.passed, "{c}");
    }
}

#[test]
fn strides_ignored() {
    // kernels honour strides or reject them with BadStrides; one that reads a
    // strided view as contiguous reads the NaN padding
    caught(CpuKMajor::new, Mistake::StridesIgnored, Check::Strides, None);
    caught(CpuVMajor::new, Mistake::StridesIgnored, Check::Strides, None);
}

#[test]
fn conv_window_offset_by_accepted_count() {
    let failed = caught(CpuVMajor::new, Mistake::ConvWindowOffByAccepted, Check::LayerForward, None);
    assert!(failed.iter().any(|f| f.contains("conv window")), "{failed:?}");
    assert!(failed.iter().all(|f| !f.contains(": state:")), "only the conv window is wrong: {failed:?}");
}

#[test]
fn snapshot_taken_from_wrong_chunk() {
    let failed = caught(CpuKMajor::new, Mistake::SnapshotFromWrongChunk, Check::ExtendOracle, None);
    assert!(failed.iter().any(|f| f.contains("snapshot")), "{failed:?}");
    let failed = caught(CpuVMajor::new, Mistake::SnapshotFromWrongChunk, Check::LayerForward, None);
    assert!(failed.iter().any(|f| f.contains("snapshot")), "{failed:?}");
}
