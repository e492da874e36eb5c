//! DESIGN §4: strided inputs give the same bits as contiguous ones, or a
//! typed `BadStrides`.

use super::{sh, Ctx};
use crate::gen::DeltaInputs;
use crate::harness::{Batch, Bench};
use deltanet_core::{DType, DeltaIo, DeviceTensor, Error, ExtendBatch, KernelDispatcher, MambaStatePool, Result};

pub(crate) fn strides<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let shape = sh(1, 2, 16, 32, false);
    let dims = shape.dims()?;
    let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
    let seed = ctx.seed(&[]);
    let cu = [0usize, 70, 73];
    let inp = DeltaInputs::random(&dims, 73, dt, seed ^ 23);
    let (hk, hv, k, v) = (dims.num_k_heads, dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
    let t = 73;
    // contiguous reference
    let mut c = Bench::new(&d, dims, 2, sd, None, dt)?;
    let cs = c.pool.alloc(2)?;
    c.randomize(&cs, seed)?;
    let o_ref = c.run(Batch::Extend(&ExtendBatch::new(&c.pool, &cu, &cs, &[true, false])?), &inp)?;
    let st_ref = c.states(&cs)?;
    // the same values in padded rows; the padding is NaN so a kernel that ignores strides shows it
    let pad = 5;
    let padded = |x: &[f32], rows: usize, inner: usize| -> Vec<f32> {
        let mut out = vec![f32::NAN; rows * (inner + pad)];
        for r in 0..rows {
            out[r * (inner + pad)..r * (inner + pad) + inner].copy_from_slice(&x[r * inner..(r + 1) * inner]);
        }
        out
    };
    let mut b = Bench::new(&d, dims, 2, sd, None, dt)?;
    let bs = b.pool.alloc(2)?;
    b.randomize(&bs, seed)?;
    let m = d.memory();
    let qb = DeviceTensor::from_f32(m, dt, &[t * hk, k + pad], &padded(&inp.q, t * hk, k))?;
    let kb = DeviceTensor::from_f32(m, dt, &[t * hk, k + pad], &padded(&inp.k, t * hk, k))?;
    let vb = DeviceTensor::from_f32(m, dt, &[t * hv, v + pad], &padded(&inp.v, t * hv, v))?;
    let gb = DeviceTensor::from_f32(m, DType::F32, &[t, hv + pad], &padded(&inp.g, t, hv))?;
    let betab = DeviceTensor::from_f32(m, DType::F32, &[t, hv + pad], &padded(&inp.beta, t, hv))?;
    let mut ob = DeviceTensor::zeros(m, dt, &[t, hv, v])?;
    let batch = ExtendBatch::new(&b.pool, &cu, &bs, &[true, false])?;
    let digest = b.pool.digest()?;
    let io = DeltaIo {
        q: qb.view().restride(0, &[t, hk, k], &[hk * (k + pad), k + pad, 1])?,
        k: kb.view().restride(0, &[t, hk, k], &[hk * (k + pad), k + pad, 1])?,
        v: vb.view().restride(0, &[t, hv, v], &[hv * (v + pad), v + pad, 1])?,
        g: gb.view().restride(0, &[t, hv], &[hv + pad, 1])?,
        beta: betab.view().restride(0, &[t, hv], &[hv + pad, 1])?,
        o: ob.view_mut(),
        params: b.params,
    };
    let name = format!("{} padded rows (+{pad}, NaN padding)", shape.name());
    match b.run_io(Batch::Extend(&batch), io) {
        Ok(()) => {
            ctx.bits(&format!("{name}: outputs == contiguous"), &ob.to_f32()?, &o_ref);
            ctx.bits(&format!("{name}: states == contiguous"), &b.states(&bs)?, &st_ref);
        }
        Err(Error::BadStrides { .. }) => {
            ctx.exact(&format!("{name}: rejected with BadStrides, pool unchanged"), b.pool.digest()? == digest, "rejected".into());
        }
        Err(e) => ctx.fail(&name, format!("neither honoured nor rejected with BadStrides: {e}")),
    }
    Ok(())
}
