//! The kernels one level below the layer forward: a pool, then the delta rule's
//! extend, decode, verify and commit on one layer, on `DeltaIo` views (q, k, v,
//! g, beta already computed). An engine calls the layer forward instead
//! (`forward_extend` & co., see examples/engine.rs).
use deltanet::cpu::CpuKMajor;
use deltanet::*;

fn main() -> Result<()> {
    let dims = ModelDims::builder().key_heads(2).value_heads(4).head_k_dim(32).head_v_dim(32).conv_width(4).build()?;
    let cpu = CpuKMajor::new();
    let mut pool = cpu.new_pool(PoolConfig::builder(dims).layers(1).slots(8).speculative(3).build()?)?; // D = 3 drafts
    let slot = pool.alloc(1)?;
    let params = DeltaParams::new(&dims);
    let (hk, hv, k, v) = (2, 4, 32, 32);
    let run =
        |pool: &mut PoolOf<CpuKMajor>, t: usize, op: &dyn Fn(&mut PoolOf<CpuKMajor>, DeltaIo<'_>) -> Result<()>| -> Result<Vec<f32>> {
            let qk: Vec<f32> = (0..t * hk * k).map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5).collect();
            let vv: Vec<f32> = (0..t * hv * v).map(|i| ((i * 104729) % 17) as f32 / 17.0 - 0.5).collect();
            let (g, beta) = (vec![-0.05f32; t * hv], vec![0.5f32; t * hv]);
            let mut o = vec![0f32; t * hv * v];
            let io = DeltaIo {
                q: TensorRef::from_slice(&qk, &[t, hk, k])?,
                k: TensorRef::from_slice(&qk, &[t, hk, k])?,
                v: TensorRef::from_slice(&vv, &[t, hv, v])?,
                g: TensorRef::from_slice(&g, &[t, hv])?,
                beta: TensorRef::from_slice(&beta, &[t, hv])?,
                o: TensorMut::from_slice(&mut o, &[t, hv, v])?,
                params,
            };
            op(pool, io)?;
            Ok(o)
        };
    let prefill = ExtendBatch::new(&pool, &[0, 100], &slot, &[false])?; // one 100-token prompt
    run(&mut pool, 100, &|p, io| cpu.extend(p, 0, &prefill, io))?;
    let step = DecodeBatch::new(&pool, &slot)?;
    run(&mut pool, 1, &|p, io| cpu.decode(p, 0, &step, io))?;
    let drafts = VerifyBatch::chain(&pool, &slot)?; // 3 draft tokens into the scratch
    run(&mut pool, 3, &|p, io| cpu.verify(p, 0, &drafts, io))?;
    let accept = CommitBatch::new(&pool, &slot, &[Some(1)], &[])?; // drafts 0 and 1 accepted
    cpu.commit(&mut pool, 0, &accept)?;
    println!("state after commit: {} bytes in canonical order", pool.export(slot[0])?.temporal.len());
    pool.free(&slot)
}
