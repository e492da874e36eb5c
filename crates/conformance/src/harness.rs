//! Staging inputs in a backend's memory and running one operation on its pool.

use crate::gen::{rng, uniform, DeltaInputs, LayerInputs, LayerParams};
use deltanet_core::{
    CommitBatch, DType, DecodeBatch, DeltaIo, DeltaParams, DeviceTensor, ExtendBatch, HostState, KernelDispatcher, LayerInput,
    LayerWeights, LayerWorkspace, MambaStatePool, ModelDims, PoolConfig, PoolOf, Result, Slot, SpecMode, VerifyBatch,
};

/// Which batch an operation runs.
#[derive(Clone, Copy)]
pub(crate) enum Batch<'b> {
    Extend(&'b ExtendBatch),
    Decode(&'b DecodeBatch),
    Verify(&'b VerifyBatch),
}

/// Raw delta-rule inputs staged in device memory.
pub(crate) struct Staged<M: deltanet_core::DeviceMemory> {
    pub q: DeviceTensor<M>,
    pub k: DeviceTensor<M>,
    pub v: DeviceTensor<M>,
    pub g: DeviceTensor<M>,
    pub beta: DeviceTensor<M>,
    pub o: DeviceTensor<M>,
}

impl<M: deltanet_core::DeviceMemory> Staged<M> {
    pub fn io(&mut self, params: DeltaParams) -> DeltaIo<'_> {
        DeltaIo {
            q: self.q.view(),
            k: self.k.view(),
            v: self.v.view(),
            g: self.g.view(),
            beta: self.beta.view(),
            o: self.o.view_mut(),
            params,
        }
    }
}

/// A dispatcher, a two-layer pool of its own, and the dtype inputs are staged in.
/// Kernels run on layer 1; layer 0 must never change.
pub(crate) struct Bench<'d, D: KernelDispatcher> {
    pub d: &'d D,
    pub pool: PoolOf<D>,
    pub dims: ModelDims,
    pub layer: usize,
    pub params: DeltaParams,
    pub dtype: DType,
}

/// Layers of every pool the suite makes.
pub(crate) const LAYERS: usize = 2;

impl<'d, D: KernelDispatcher> Bench<'d, D> {
    /// A pool of `slots` slots with `state_dtype` state, speculative buffers for
    /// `draft` tokens when given, f32 conv state when the backend has it.
    pub fn new(d: &'d D, dims: ModelDims, slots: usize, state_dtype: DType, draft: Option<usize>, dtype: DType) -> Result<Self> {
        Self::with_conv(d, dims, slots, state_dtype, Self::default_conv_dtype(d), draft, dtype)
    }

    /// As [`Bench::new`] with speculative buffers for `draft` tokens in `mode`.
    pub fn speculative(
        d: &'d D,
        dims: ModelDims,
        slots: usize,
        state_dtype: DType,
        draft: usize,
        mode: SpecMode,
        dtype: DType,
    ) -> Result<Self> {
        let cfg = PoolConfig::new(LAYERS, slots, dims)
            .with_state_dtype(state_dtype)
            .with_conv_dtype(Self::default_conv_dtype(d))
            .with_speculative(draft)
            .with_spec_mode(mode);
        let pool = d.new_pool(cfg)?;
        Ok(Bench { d, pool, dims, layer: 1, params: DeltaParams::new(&dims), dtype })
    }

    /// f32 conv state if claimed, else the first claimed.
    fn default_conv_dtype(d: &D) -> DType {
        let caps = d.capabilities();
        if caps.conv_dtypes.contains(&DType::F32) {
            DType::F32
        } else {
            caps.conv_dtypes[0]
        }
    }

    /// As [`Bench::new`] with the conv-state dtype given.
    pub fn with_conv(
        d: &'d D,
        dims: ModelDims,
        slots: usize,
        state_dtype: DType,
        conv_dtype: DType,
        draft: Option<usize>,
        dtype: DType,
    ) -> Result<Self> {
        let mut cfg = PoolConfig::new(LAYERS, slots, dims).with_state_dtype(state_dtype).with_conv_dtype(conv_dtype);
        if let Some(n) = draft {
            cfg = cfg.with_speculative(n);
        }
        let pool = d.new_pool(cfg)?;
        Ok(Bench { d, pool, dims, layer: 1, params: DeltaParams::new(&dims), dtype })
    }

    /// f32 state if claimed, else the first claimed.
    pub fn default_state_dtype(d: &D) -> DType {
        let c = d.capabilities();
        if c.state_dtypes.contains(&DType::F32) {
            DType::F32
        } else {
            c.state_dtypes[0]
        }
    }

    /// f32 inputs if claimed, else the first claimed.
    pub fn default_dtype(d: &D) -> DType {
        let c = d.capabilities();
        if c.input_dtypes.contains(&DType::F32) {
            DType::F32
        } else {
            c.input_dtypes[0]
        }
    }

    /// Imports random state (all layers, recurrent and conv) into each slot.
    pub fn randomize(&mut self, slots: &[Slot], seed: u64) -> Result<()> {
        let cfg = self.pool.geometry().config;
        for (i, &s) in slots.iter().enumerate() {
            let mut r = rng(seed.wrapping_add(i as u64 * 7919));
            let t = uniform(&mut r, LAYERS * self.dims.state_elems(), -0.5, 0.5, DType::F32);
            let c = uniform(&mut r, LAYERS * self.dims.conv_elems(), -1.0, 1.0, DType::F32);
            let st = HostState::from_f32(LAYERS, self.dims, cfg.state_dtype, cfg.conv_dtype, &t, &c)?;
            self.pool.import(s, &st)?;
        }
        Ok(())
    }

    /// Canonical recurrent state of `slot` in the kernel layer, as f32.
    pub fn state(&self, slot: Slot) -> Result<Vec<f32>> {
        let per = self.dims.state_elems();
        Ok(self.pool.export(slot)?.temporal_f32()[self.layer * per..(self.layer + 1) * per].to_vec())
    }

    /// Canonical conv state of `slot` in the kernel layer, as f32.
    pub fn conv(&self, slot: Slot) -> Result<Vec<f32>> {
        let per = self.dims.conv_elems();
        Ok(self.pool.export(slot)?.conv_f32()[self.layer * per..(self.layer + 1) * per].to_vec())
    }

    /// States of several slots, concatenated (`[N, HV, K, V]`).
    pub fn states(&self, slots: &[Slot]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for &s in slots {
            out.extend(self.state(s)?);
        }
        Ok(out)
    }

    /// Conv states of several slots, concatenated (`[N, conv_dim, W-1]`).
    pub fn convs(&self, slots: &[Slot]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for &s in slots {
            out.extend(self.conv(s)?);
        }
        Ok(out)
    }

    /// Layer-0 bytes of every slot: must never change.
    pub fn layer0(&self, slots: &[Slot]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for &s in slots {
            let e = self.pool.export(s)?;
            out.extend_from_slice(&e.temporal[..e.temporal.len() / LAYERS]);
            out.extend_from_slice(&e.conv[..e.conv.len() / LAYERS]);
        }
        Ok(out)
    }

    /// Stages raw inputs (q, k, v in the bench dtype; g, beta f32) and a zeroed output.
    pub fn stage(&self, inp: &DeltaInputs) -> Result<Staged<D::Memory>> {
        self.stage_as(inp, self.dtype)
    }

    /// As [`Bench::stage`] in another dtype.
    pub fn stage_as(&self, inp: &DeltaInputs, dtype: DType) -> Result<Staged<D::Memory>> {
        let m = self.d.memory();
        let d = &self.dims;
        let t = inp.tokens;
        Ok(Staged {
            q: DeviceTensor::from_f32(m, dtype, &[t, d.num_k_heads, d.head_k_dim], &inp.q)?,
            k: DeviceTensor::from_f32(m, dtype, &[t, d.num_k_heads, d.head_k_dim], &inp.k)?,
            v: DeviceTensor::from_f32(m, dtype, &[t, d.num_v_heads, d.head_v_dim], &inp.v)?,
            g: DeviceTensor::from_f32(m, DType::F32, &[t, d.num_v_heads], &inp.g)?,
            beta: DeviceTensor::from_f32(m, DType::F32, &[t, d.num_v_heads], &inp.beta)?,
            o: DeviceTensor::zeros(m, dtype, &[t, d.num_v_heads, d.head_v_dim])?,
        })
    }

    /// Runs a raw delta-rule op with already made views.
    pub fn run_io(&mut self, b: Batch<'_>, io: DeltaIo<'_>) -> Result<()> {
        let (d, layer) = (self.d, self.layer);
        match b {
            Batch::Extend(b) => d.extend(&mut self.pool, layer, b, io),
            Batch::Decode(b) => d.decode(&mut self.pool, layer, b, io),
            Batch::Verify(b) => d.verify(&mut self.pool, layer, b, io),
        }
    }

    /// Runs a raw delta-rule op on `inp`; returns `o` as f32.
    pub fn run(&mut self, b: Batch<'_>, inp: &DeltaInputs) -> Result<Vec<f32>> {
        let mut st = self.stage(inp)?;
        let params = self.params;
        self.run_io(b, st.io(params))?;
        st.o.to_f32()
    }

    /// Commit through the dispatcher.
    pub fn commit(&mut self, b: &CommitBatch) -> Result<()> {
        deltanet_core::commit(self.d, &mut self.pool, self.layer, b)
    }

    /// Runs the layer forward (conv + gate + delta rule); returns `o` as f32.
    pub fn layer(&mut self, b: Batch<'_>, w: &LayerParams, x: &LayerInputs) -> Result<Vec<f32>> {
        let m = self.d.memory();
        let d = &self.dims;
        let (t, hv, c) = (x.tokens, d.num_v_heads, d.conv_dim());
        let a_log = DeviceTensor::from_f32(m, DType::F32, &[hv], &w.a_log)?;
        let dt_bias = DeviceTensor::from_f32(m, DType::F32, &[hv], &w.dt_bias)?;
        let cw = DeviceTensor::from_f32(m, DType::F32, &[c, d.conv_width], &w.conv_weight)?;
        let cb = DeviceTensor::from_f32(m, DType::F32, &[c], &w.conv_bias)?;
        let qkv = DeviceTensor::from_f32(m, self.dtype, &[t, c], &x.mixed_qkv)?;
        let a = DeviceTensor::from_f32(m, self.dtype, &[t, hv], &x.a)?;
        let bb = DeviceTensor::from_f32(m, self.dtype, &[t, hv], &x.b)?;
        let mut o = DeviceTensor::zeros(m, self.dtype, &[t, hv, d.head_v_dim])?;
        let weights = LayerWeights { a_log: a_log.view(), dt_bias: dt_bias.view(), conv_weight: cw.view(), conv_bias: Some(cb.view()) };
        let input = LayerInput { mixed_qkv: qkv.view(), a: a.view(), b: bb.view() };
        let mut ws = LayerWorkspace::new(m.clone());
        let (dd, layer, params) = (self.d, self.layer, self.params);
        match b {
            Batch::Extend(b) => {
                deltanet_core::forward_extend(dd, &mut self.pool, layer, b, &weights, &input, params, &mut ws, o.view_mut())?
            }
            Batch::Decode(b) => {
                deltanet_core::forward_decode(dd, &mut self.pool, layer, b, &weights, &input, params, &mut ws, o.view_mut())?
            }
            Batch::Verify(b) => {
                deltanet_core::forward_verify(dd, &mut self.pool, layer, b, &weights, &input, params, &mut ws, o.view_mut())?
            }
        }
        o.to_f32()
    }
}
