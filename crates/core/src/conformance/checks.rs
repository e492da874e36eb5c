//! The checks. Each builds its cases from the suite seed, runs them through
//! the harness and records one [`CaseReport`] per comparison.

use super::gen::{bit_diff, cu_from_lens, mix_seed, to_f64, DeltaInputs, LayerInputs, LayerParams};
use super::harness::{Batch, Bench, LAYERS};
use super::{CaseReport, Check, SuiteOptions};
use crate::batch::{CommitBatch, DecodeBatch, ExtendBatch, Snapshot, VerifyBatch};
use crate::device_tensor::DeviceTensor;
use crate::dims::{HeadMapping, ModelDims};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{KMajor, LayoutKind, StateLayout, VMajor};
use crate::memory::HostMemory;
use crate::oracle::error_ratio;
use crate::pool::{HostState, MambaStatePool, Slot, StatePool};
use crate::{Capabilities, DeltaIo, KernelDispatcher, PoolOf};

pub(crate) struct Ctx<'a> {
    pub check: Check,
    pub opts: &'a SuiteOptions,
    pub out: &'a mut Vec<CaseReport>,
}

impl Ctx<'_> {
    fn push(&mut self, case: &str, error: f64, tolerance: f64, passed: bool, detail: String) {
        let r = CaseReport { check: self.check, case: case.to_string(), seed: self.opts.seed, error, tolerance, passed, detail };
        if self.opts.verbose {
            println!("{r}");
        }
        self.out.push(r);
    }

    /// Error ratio of `x` against `reference`, held to `tol`.
    pub(crate) fn ratio(&mut self, case: &str, x: &[f32], reference: &[f64], tol: f64) {
        if x.len() != reference.len() {
            self.push(case, f64::INFINITY, tol, false, format!("length {} vs reference {}", x.len(), reference.len()));
            return;
        }
        let e = error_ratio(x, reference);
        self.push(case, e, tol, e.is_finite() && e <= tol, String::new());
    }

    /// Bitwise equality.
    fn bits(&mut self, case: &str, a: &[f32], b: &[f32]) {
        let n = bit_diff(a, b);
        self.push(case, n as f64, 0.0, n == 0, if n == 0 { String::new() } else { format!("{n} of {} elements differ", a.len()) });
    }

    /// A yes/no condition.
    pub(crate) fn exact(&mut self, case: &str, ok: bool, detail: String) {
        self.push(case, if ok { 0.0 } else { 1.0 }, 0.0, ok, detail);
    }

    pub fn fail(&mut self, case: &str, detail: String) {
        self.push(case, f64::INFINITY, 0.0, false, detail);
    }

    fn seed(&self, parts: &[u64]) -> u64 {
        let mut all = vec![self.opts.seed, self.check as u64];
        all.extend_from_slice(parts);
        mix_seed(&all)
    }

    /// Tolerance for inputs in `dtype`, state in `state`, longest sequence `max_len`.
    pub(crate) fn tol(&self, dtype: DType, state: DType, max_len: usize) -> f64 {
        if dtype == DType::BF16 || state == DType::BF16 {
            self.opts.bf16_tol
        } else if dtype == DType::F16 {
            self.opts.f16_tol
        } else if max_len > 256 {
            self.opts.f32_long_tol
        } else {
            self.opts.f32_tol
        }
    }
}

/// A head shape.
#[derive(Clone, Copy)]
struct Shape {
    hk: usize,
    hv: usize,
    k: usize,
    v: usize,
    tiled: bool,
}

const fn sh(hk: usize, hv: usize, k: usize, v: usize, tiled: bool) -> Shape {
    Shape { hk, hv, k, v, tiled }
}

impl Shape {
    fn dims(&self) -> Result<ModelDims> {
        let d = ModelDims::new(self.hk, self.hv, self.k, self.v, 4)?;
        Ok(if self.tiled { d.with_head_mapping(HeadMapping::Tiled) } else { d })
    }
    fn name(&self) -> String {
        format!("hk{} hv{} k{} v{} {}", self.hk, self.hv, self.k, self.v, if self.tiled { "tiled" } else { "grouped" })
    }
}

/// Canonical initial states as the oracle wants them: the slot's state where
/// `init`, zeros elsewhere.
fn init_states(per: usize, states: &[f32], init: &[bool]) -> Vec<f32> {
    let mut out = states.to_vec();
    for (i, &f) in init.iter().enumerate() {
        if !f {
            out[i * per..(i + 1) * per].fill(0.0);
        }
    }
    out
}

/// Packed token indices of chunk `[a, b)` of every sequence (clamped to its length).
fn chunk_index(cu: &[usize], a: usize, b: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut idx = Vec::new();
    let mut lens = Vec::new();
    for s in 0..cu.len() - 1 {
        let len = cu[s + 1] - cu[s];
        let end = b[s].min(len);
        if end > a {
            idx.extend(cu[s] + a..cu[s] + end);
            lens.push(end - a);
        } else {
            lens.push(0);
        }
    }
    (idx, lens)
}

fn scatter(dst: &mut [f32], src: &[f32], idx: &[usize], per: usize) {
    for (j, &t) in idx.iter().enumerate() {
        dst[t * per..(t + 1) * per].copy_from_slice(&src[j * per..(j + 1) * per]);
    }
}

// ---------------------------------------------------------------- 1. extend vs oracle

pub(crate) fn extend_oracle<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let cases: Vec<(Shape, Vec<usize>, bool)> = vec![
        (sh(1, 1, 16, 16, false), vec![1, 63, 64, 65], false),
        (sh(1, 2, 32, 48, false), vec![65, 1, 130], false),
        (sh(2, 4, 48, 32, true), vec![64, 63, 1], false),
        (sh(1, 4, 128, 64, false), vec![65, 129], false),
        (sh(2, 2, 64, 128, false), vec![100], false),
        (sh(2, 8, 16, 48, false), vec![70, 5], false),
        (sh(2, 8, 16, 48, true), vec![70, 5], false),
        (sh(1, 2, 16, 32, false), vec![4096, 1, 63, 64, 65, 1000], true),
        // Qwen3.5 / Qwen3-Next head dims
        (sh(1, 4, 128, 128, true), vec![65, 63, 1], false),
        (sh(2, 4, 128, 128, false), vec![1000, 64], true),
    ];
    for (ci, (shape, lens, long)) in cases.into_iter().enumerate() {
        let name = format!("{} lens {:?}", shape.name(), lens);
        if (long && !ctx.opts.long) || !ctx.opts.wants(&name) {
            continue;
        }
        let d = make();
        let dims = shape.dims()?;
        let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
        let n = lens.len();
        let nsnap = if n >= 2 { 2 } else { 1 };
        let mut b = Bench::new(&d, dims, n + nsnap, sd, None, dt)?;
        let seed = ctx.seed(&[ci as u64]);
        let slots = b.pool.alloc(n)?;
        let snap_slots = b.pool.alloc(nsnap)?;
        let all: Vec<Slot> = slots.iter().chain(&snap_slots).copied().collect();
        b.randomize(&all, seed)?;
        let init: Vec<bool> = (0..n).map(|j| (j + ci) % 2 == 0).collect();
        let before = b.states(&slots)?;
        let layer0 = b.layer0(&all)?;
        let cu = cu_from_lens(&lens);
        let inp = DeltaInputs::random(&dims, cu[n], dt, seed ^ 1);
        // snapshots: sequence 0 after min(len, 64) tokens, the last sequence at its end
        let mut snaps = vec![Snapshot { seq: 0, position: lens[0].min(64), slot: snap_slots[0] }];
        if nsnap == 2 {
            snaps.push(Snapshot { seq: n - 1, position: lens[n - 1], slot: snap_slots[1] });
        }
        let batch = ExtendBatch::new(&b.pool, &cu, &slots, &init)?.with_snapshots(&b.pool, &snaps)?;
        let o = b.run(Batch::Extend(&batch), &inp)?;
        let per = dims.state_elems();
        let init_st = init_states(per, &before, &init);
        let r = inp.oracle(&b.params, &cu, Some(&init_st));
        let tol = ctx.tol(dt, sd, *lens.iter().max().unwrap());
        ctx.ratio(&format!("{name} init {init:?}: outputs"), &o, &r.o, tol);
        ctx.ratio(&format!("{name} init {init:?}: final states"), &b.states(&slots)?, &r.final_state, tol);
        for (si, s) in snaps.iter().enumerate() {
            let part = inp.slice(cu[s.seq]..cu[s.seq] + s.position);
            let pr = part.oracle(&b.params, &[0, s.position], Some(&init_st[s.seq * per..(s.seq + 1) * per]));
            ctx.ratio(&format!("{name}: snapshot {si} (seq {} at {})", s.seq, s.position), &b.state(s.slot)?, &pr.final_state, tol);
        }
        ctx.exact(&format!("{name}: layer 0 untouched"), b.layer0(&all)? == layer0, String::new());
    }
    Ok(())
}

// ---------------------------------------------------------------- 2. split extend

pub(crate) fn split_extend<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
    let mut rs = super::gen::rng(ctx.seed(&[999]));
    let r1 = rand::Rng::gen_range(&mut rs, 2..100usize);
    let r2 = rand::Rng::gen_range(&mut rs, r1 + 1..190usize);
    let splits: Vec<Vec<usize>> = vec![vec![1], vec![63], vec![64], vec![65], vec![64, 128], vec![1, 64, 65], vec![r1, r2]];
    let shapes = [sh(1, 2, 32, 16, false), sh(2, 4, 16, 48, true), sh(1, 2, 128, 128, false)];
    for (si, shape) in shapes.iter().enumerate() {
        let dims = shape.dims()?;
        let lens = [200usize, 193];
        let cu = cu_from_lens(&lens);
        let seed = ctx.seed(&[si as u64]);
        let inp = DeltaInputs::random(&dims, cu[2], dt, seed ^ 3);
        let init = [true, false];
        // one extend
        let mut whole = Bench::new(&d, dims, 2, sd, None, dt)?;
        let ws = whole.pool.alloc(2)?;
        whole.randomize(&ws, seed)?;
        let before = whole.states(&ws)?;
        let batch = ExtendBatch::new(&whole.pool, &cu, &ws, &init)?;
        let o_whole = whole.run(Batch::Extend(&batch), &inp)?;
        let st_whole = whole.states(&ws)?;
        let r = inp.oracle(&whole.params, &cu, Some(&init_states(dims.state_elems(), &before, &init)));
        for sp in &splits {
            let name = format!("{} lens {:?} split at {:?}", shape.name(), lens, sp);
            if !ctx.opts.wants(&name) {
                continue;
            }
            let mut b = Bench::new(&d, dims, 2, sd, None, dt)?;
            let slots = b.pool.alloc(2)?;
            b.randomize(&slots, seed)?;
            let per = dims.num_v_heads * dims.head_v_dim;
            let mut o = vec![0.0f32; cu[2] * per];
            let mut bounds = vec![0];
            bounds.extend(sp);
            for (j, &a) in bounds.iter().enumerate() {
                let end = bounds.get(j + 1).copied().unwrap_or(usize::MAX);
                let (idx, clens) = chunk_index(&cu, a, &[end, end]);
                let flags: Vec<bool> = if j == 0 { init.to_vec() } else { vec![true, true] };
                let batch = ExtendBatch::new(&b.pool, &cu_from_lens(&clens), &slots, &flags)?;
                let oc = b.run(Batch::Extend(&batch), &inp.gather(&idx))?;
                scatter(&mut o, &oc, &idx, per);
            }
            let st = b.states(&slots)?;
            if sp.iter().all(|&x| x % 64 == 0) {
                ctx.bits(&format!("{name}: outputs == one extend"), &o, &o_whole);
                ctx.bits(&format!("{name}: states == one extend"), &st, &st_whole);
            } else {
                let tol = ctx.tol(dt, sd, 200);
                ctx.ratio(&format!("{name}: outputs vs oracle"), &o, &r.o, tol);
                ctx.ratio(&format!("{name}: states vs oracle"), &st, &r.final_state, tol);
                ctx.ratio(&format!("{name}: outputs vs one extend"), &o, &to_f64(&o_whole), 2.0 * tol);
                ctx.ratio(&format!("{name}: states vs one extend"), &st, &to_f64(&st_whole), 2.0 * tol);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- 3. extend then decode

pub(crate) fn extend_decode<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let shapes = [sh(1, 1, 16, 16, false), sh(2, 4, 32, 48, false), sh(1, 2, 128, 64, true)];
    let lens = [70usize, 5, 64];
    let ndec = 3;
    for (si, shape) in shapes.iter().enumerate() {
        let name = format!("{} lens {:?} last {ndec} decoded", shape.name(), lens);
        if !ctx.opts.wants(&name) {
            continue;
        }
        let d = make();
        let dims = shape.dims()?;
        let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
        let seed = ctx.seed(&[si as u64]);
        let cu = cu_from_lens(&lens);
        let inp = DeltaInputs::random(&dims, cu[3], dt, seed ^ 5);
        let init = [true, false, true];
        let per = dims.num_v_heads * dims.head_v_dim;
        // one extend of the whole
        let mut whole = Bench::new(&d, dims, 3, sd, None, dt)?;
        let ws = whole.pool.alloc(3)?;
        whole.randomize(&ws, seed)?;
        let before = whole.states(&ws)?;
        let o_whole = whole.run(Batch::Extend(&ExtendBatch::new(&whole.pool, &cu, &ws, &init)?), &inp)?;
        let st_whole = whole.states(&ws)?;
        let r = inp.oracle(&whole.params, &cu, Some(&init_states(dims.state_elems(), &before, &init)));
        // extend the prefixes, then decode the rest together
        let mut b = Bench::new(&d, dims, 3, sd, None, dt)?;
        let slots = b.pool.alloc(3)?;
        b.randomize(&slots, seed)?;
        let prefix: Vec<usize> = lens.iter().map(|l| l - ndec).collect();
        let (idx, plens) = chunk_index(&cu, 0, &prefix);
        let mut o = vec![0.0f32; cu[3] * per];
        let oc = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu_from_lens(&plens), &slots, &init)?), &inp.gather(&idx))?;
        scatter(&mut o, &oc, &idx, per);
        let dec = DecodeBatch::new(&b.pool, &slots)?;
        for t in 0..ndec {
            let idx: Vec<usize> = (0..3).map(|s| cu[s] + prefix[s] + t).collect();
            let oc = b.run(Batch::Decode(&dec), &inp.gather(&idx))?;
            scatter(&mut o, &oc, &idx, per);
        }
        let tol = ctx.tol(dt, sd, 70);
        let st = b.states(&slots)?;
        ctx.ratio(&format!("{name}: outputs vs oracle"), &o, &r.o, tol);
        ctx.ratio(&format!("{name}: states vs oracle"), &st, &r.final_state, tol);
        ctx.ratio(&format!("{name}: outputs vs one extend"), &o, &to_f64(&o_whole), 2.0 * tol);
        ctx.ratio(&format!("{name}: states vs one extend"), &st, &to_f64(&st_whole), 2.0 * tol);
    }
    Ok(())
}

// ---------------------------------------------------------------- 4. verify + commit

/// Ancestors of step `t` (root first), `t` included.
pub(crate) fn path(parents: &[i64], t: usize) -> Vec<usize> {
    let mut p = vec![t];
    let mut cur = parents[t];
    while cur >= 0 {
        p.push(cur as usize);
        cur = parents[cur as usize];
    }
    p.reverse();
    p
}

pub(crate) fn verify_commit<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let draft = 4usize;
    let trees: [(&str, Vec<i64>); 2] =
        [("chains", vec![-1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2]), ("trees", vec![-1, 0, 1, 2, -1, 0, 0, 1, -1, -1, 1, 2])];
    for (si, shape) in [sh(1, 2, 32, 16, false), sh(2, 2, 16, 48, true), sh(1, 4, 64, 32, false)].iter().enumerate() {
        for (ti, (kind, parents)) in trees.iter().enumerate() {
            let name = format!("{} D={draft} {kind}", shape.name());
            if !ctx.opts.wants(&name) {
                continue;
            }
            let d = make();
            let dims = shape.dims()?;
            if d.capabilities().max_draft_tokens.is_some_and(|m| m < draft) {
                ctx.exact(&format!("{name}: skipped (backend allows fewer draft tokens)"), true, String::new());
                continue;
            }
            let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
            let seed = ctx.seed(&[si as u64, ti as u64]);
            let mut b = Bench::new(&d, dims, 4, sd, Some(draft), dt)?;
            let slots = b.pool.alloc(3)?;
            let snap = b.pool.alloc(1)?[0];
            b.randomize(&slots, seed)?;
            // a prefix extend so the verified state is a kernel-made one
            let lens = [5usize, 64, 1];
            let cu = cu_from_lens(&lens);
            let pre = DeltaInputs::random(&dims, cu[3], dt, seed ^ 7);
            b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu, &slots, &[true, false, true])?), &pre)?;
            let s0 = b.states(&slots)?;
            let saved: Vec<HostState> = slots.iter().map(|&s| b.pool.export(s)).collect::<Result<_>>()?;
            let drafts = DeltaInputs::random(&dims, 3 * draft, dt, seed ^ 11);
            let vb = VerifyBatch::tree(&b.pool, &slots, draft, parents)?;
            let o = b.run(Batch::Verify(&vb), &drafts)?;
            let after: Vec<HostState> = slots.iter().map(|&s| b.pool.export(s)).collect::<Result<_>>()?;
            ctx.exact(&format!("{name}: main state untouched by verify"), after == saved, String::new());
            // expected per step: the path from the slot's state
            let (per_o, per_s) = (dims.num_v_heads * dims.head_v_dim, dims.state_elems());
            let mut o_ref = vec![0.0f64; 3 * draft * per_o];
            let mut st_ref = vec![vec![]; 3 * draft];
            for i in 0..3 {
                let par = &parents[i * draft..(i + 1) * draft];
                for t in 0..draft {
                    let p: Vec<usize> = path(par, t).iter().map(|&x| i * draft + x).collect();
                    let r = drafts.gather(&p).oracle(&b.params, &[0, p.len()], Some(&s0[i * per_s..(i + 1) * per_s]));
                    let last = (p.len() - 1) * per_o;
                    o_ref[(i * draft + t) * per_o..(i * draft + t + 1) * per_o].copy_from_slice(&r.o[last..last + per_o]);
                    st_ref[i * draft + t] = r.final_state;
                }
            }
            let tol = ctx.tol(dt, sd, 64);
            ctx.ratio(&format!("{name}: verify outputs vs decoding each path"), &o, &o_ref, tol);
            for a in 0..draft {
                let acc: Vec<usize> = (0..3).map(|i| (a + i) % draft).collect();
                let snaps = if a == 0 { vec![Some(snap), None, None] } else { vec![] };
                let cb = CommitBatch::new(&b.pool, &slots, &acc, &snaps)?;
                b.commit(&cb)?;
                for i in 0..3 {
                    ctx.ratio(
                        &format!("{name}: request {i} commit of step {} vs decoding its path", acc[i]),
                        &b.state(slots[i])?,
                        &st_ref[i * draft + acc[i]],
                        tol,
                    );
                }
                if a == 0 {
                    ctx.exact(&format!("{name}: commit snapshot == committed state"), b.state(snap)? == b.state(slots[0])?, String::new());
                }
                // Restoring the main state makes the verify stale: verify again
                // (same inputs, same scratch) before committing the next step.
                for (s, st) in slots.iter().zip(&saved) {
                    b.pool.import(*s, st)?;
                }
                b.run(Batch::Verify(&vb), &drafts)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- 5. batch invariance and determinism

/// Runs X (len 100, with initial state) through extend, 2 decodes and a verify,
/// inside a batch laid out as `layout` ('X' = the target, digits = other
/// sequences' lengths / 10 + 1). Returns X's outputs and final states.
fn run_in_batch<D: KernelDispatcher>(d: &D, dims: ModelDims, layout: &[usize], x_pos: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
    let (dt, sd) = (Bench::default_dtype(d), Bench::default_state_dtype(d));
    let n = layout.len();
    let draft = 3;
    let mut b = Bench::new(d, dims, n + 2, sd, Some(draft), dt)?;
    // occupy some slots first so X does not always land in the same slot index
    let pad = b.pool.alloc(x_pos % 2 + 1)?;
    let slots = b.pool.alloc(n)?;
    b.pool.free(&pad)?;
    for (j, &s) in slots.iter().enumerate() {
        let sseed = if j == x_pos { seed } else { seed ^ ((j as u64 + 1) * 0x1234_5678) };
        b.randomize(&[s], sseed)?;
    }
    let cu = cu_from_lens(layout);
    // X's tokens come from its own stream; others from theirs
    let stream = |j: usize, len: usize, salt: u64| {
        let s = if j == x_pos { seed ^ salt } else { seed ^ salt ^ ((j as u64 + 7) * 0x9999) };
        DeltaInputs::random(&dims, len, dt, s)
    };
    let parts: Vec<DeltaInputs> = layout.iter().enumerate().map(|(j, &l)| stream(j, l, 1)).collect();
    let all = concat(&parts);
    let init = vec![true; n];
    let o = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu, &slots, &init)?), &all)?;
    let per = dims.num_v_heads * dims.head_v_dim;
    let mut out = vec![o[cu[x_pos] * per..cu[x_pos + 1] * per].to_vec(), b.state(slots[x_pos])?];
    let dec = DecodeBatch::new(&b.pool, &slots)?;
    for step in 0..2u64 {
        let parts: Vec<DeltaInputs> = (0..n).map(|j| stream(j, 1, 100 + step)).collect();
        let o = b.run(Batch::Decode(&dec), &concat(&parts))?;
        out.push(o[x_pos * per..(x_pos + 1) * per].to_vec());
    }
    out.push(b.state(slots[x_pos])?);
    let vb = VerifyBatch::chain(&b.pool, &slots, draft)?;
    let parts: Vec<DeltaInputs> = (0..n).map(|j| stream(j, draft, 200)).collect();
    let o = b.run(Batch::Verify(&vb), &concat(&parts))?;
    out.push(o[x_pos * draft * per..(x_pos + 1) * draft * per].to_vec());
    let cb = CommitBatch::new(&b.pool, &slots, &vec![1; n], &[])?;
    b.commit(&cb)?;
    out.push(b.state(slots[x_pos])?);
    Ok(out)
}

fn concat(parts: &[DeltaInputs]) -> DeltaInputs {
    let mut all = parts[0].clone();
    for p in &parts[1..] {
        all.tokens += p.tokens;
        all.q.extend(&p.q);
        all.k.extend(&p.k);
        all.v.extend(&p.v);
        all.g.extend(&p.g);
        all.beta.extend(&p.beta);
    }
    all
}

const STAGES: [&str; 7] =
    ["extend outputs", "extend state", "decode 1 output", "decode 2 output", "decode state", "verify outputs", "commit state"];

pub(crate) fn batch_invariance<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    for (si, shape) in [sh(2, 4, 32, 16, false), sh(1, 2, 64, 48, true)].iter().enumerate() {
        let name = shape.name();
        if !ctx.opts.wants(&name) {
            continue;
        }
        let d = make();
        let dims = shape.dims()?;
        let seed = ctx.seed(&[si as u64]);
        let alone = run_in_batch(&d, dims, &[100], 0, seed)?;
        for (layout, pos) in [(vec![37, 100, 64], 1usize), (vec![1, 130, 65, 100], 3), (vec![100, 3], 0)].iter() {
            let other = run_in_batch(&d, dims, layout, *pos, seed)?;
            for (k, stage) in STAGES.iter().enumerate() {
                ctx.bits(&format!("{name}: X in batch {layout:?} at {pos} vs alone: {stage}"), &other[k], &alone[k]);
            }
        }
    }
    Ok(())
}

pub(crate) fn determinism<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let shape = sh(2, 4, 48, 32, false);
    let name = shape.name();
    if !ctx.opts.wants(&name) {
        return Ok(());
    }
    let dims = shape.dims()?;
    let seed = ctx.seed(&[]);
    let layout = [130usize, 1, 64, 65];
    let first = run_in_batch(&make(), dims, &layout, 2, seed)?;
    for run in 1..3 {
        let again = run_in_batch(&make(), dims, &layout, 2, seed)?;
        for (k, stage) in STAGES.iter().enumerate() {
            ctx.bits(&format!("{name} batch {layout:?}: run {run} vs run 0: {stage}"), &again[k], &first[k]);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- 6. layouts

/// Imports `st` into a host-reference pool of layout `L`, exports it back.
fn through_host<L: StateLayout>(st: &HostState) -> Result<HostState> {
    let cfg = crate::pool::PoolConfig::new(st.layers, 1, st.dims).with_state_dtype(st.state_dtype).with_conv_dtype(st.conv_dtype);
    let mut caps = Capabilities::host_reference(L::KIND);
    caps.state_dtypes = vec![st.state_dtype];
    caps.conv_dtypes = vec![st.conv_dtype];
    let mut p: StatePool<HostMemory, L> = StatePool::new(HostMemory, cfg, &caps)?;
    let s = p.alloc(1)?[0];
    p.import(s, st)?;
    p.export(s)
}

pub(crate) fn layout_round_trip<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let dt = Bench::default_dtype(&d);
    let other = match D::Layout::KIND {
        LayoutKind::KMajor => LayoutKind::VMajor,
        LayoutKind::VMajor => LayoutKind::KMajor,
    };
    for (si, shape) in [sh(1, 2, 16, 48, false), sh(2, 4, 32, 16, false), sh(1, 1, 64, 64, false)].iter().enumerate() {
        for &sd in &d.capabilities().state_dtypes.clone() {
            let name = format!("{} state {sd} {} -> {} -> {}", shape.name(), D::Layout::KIND.name(), other.name(), D::Layout::KIND.name());
            if !ctx.opts.wants(&name) {
                continue;
            }
            let dims = shape.dims()?;
            let seed = ctx.seed(&[si as u64, sd as u64]);
            let mut b = Bench::new(&d, dims, 3, sd, None, dt)?;
            let slots = b.pool.alloc(3)?;
            b.randomize(&slots[..1], seed)?;
            // a kernel-made state
            let inp = DeltaInputs::random(&dims, 70, dt, seed ^ 13);
            b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &[0, 70], &slots[..1], &[true])?), &inp)?;
            let exported = b.pool.export(slots[0])?;
            let via = match other {
                LayoutKind::KMajor => through_host::<KMajor>(&exported)?,
                LayoutKind::VMajor => through_host::<VMajor>(&exported)?,
            };
            ctx.exact(&format!("{name}: through the other layout, exact"), via == exported, String::new());
            b.pool.import(slots[1], &via)?;
            ctx.exact(&format!("{name}: imported back, exact"), b.pool.export(slots[1])? == exported, String::new());
            // the imported copy is where the kernel reads: continuing from either gives the same bits
            b.pool.copy(slots[0], slots[2])?;
            let more = DeltaInputs::random(&dims, 65, dt, seed ^ 17);
            let two = [slots[1], slots[2]];
            let both = concat(&[more.clone(), more.clone()]);
            let o = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &[0, 65, 130], &two, &[true, true])?), &both)?;
            let half = o.len() / 2;
            ctx.bits(&format!("{name}: continuing from the migrated state, outputs"), &o[..half], &o[half..]);
            ctx.bits(&format!("{name}: continuing from the migrated state, states"), &b.state(two[0])?, &b.state(two[1])?);
        }
    }
    Ok(())
}

/// Same inputs through `a` and `b`: canonical states and outputs agree.
pub(crate) fn cross<A: KernelDispatcher, B: KernelDispatcher>(ctx: &mut Ctx<'_>, a: &A, b: &B) -> Result<()> {
    // dtypes both claim, f32 first
    let common = |x: &[DType], y: &[DType]| [DType::F32, DType::BF16, DType::F16].into_iter().find(|t| x.contains(t) && y.contains(t));
    let (ca, cb) = (a.capabilities(), b.capabilities());
    let (Some(dt), Some(sd)) = (common(&ca.input_dtypes, &cb.input_dtypes), common(&ca.state_dtypes, &cb.state_dtypes)) else {
        ctx.fail("cross", format!("{} and {} share no input or state dtype", ca.backend, cb.backend));
        return Ok(());
    };
    for (si, shape) in [sh(2, 4, 32, 48, false), sh(1, 2, 16, 16, true), sh(1, 1, 128, 64, false)].iter().enumerate() {
        let name = format!("{} {} vs {}", shape.name(), a.capabilities().backend, b.capabilities().backend);
        if !ctx.opts.wants(&name) {
            continue;
        }
        let dims = shape.dims()?;
        let seed = ctx.seed(&[0xc0ffee, si as u64]);
        let lens = [65usize, 130, 1];
        let cu = cu_from_lens(&lens);
        let inp = DeltaInputs::random(&dims, cu[3], dt, seed ^ 1);
        let dec = DeltaInputs::random(&dims, 3, dt, seed ^ 2);
        let init = [true, false, true];
        let mut ba = Bench::new(a, dims, 3, sd, None, dt)?;
        let mut bb = Bench::new(b, dims, 3, sd, None, dt)?;
        let sa = ba.pool.alloc(3)?;
        let sb = bb.pool.alloc(3)?;
        ba.randomize(&sa, seed)?;
        bb.randomize(&sb, seed)?;
        let before = ba.states(&sa)?;
        let oa = ba.run(Batch::Extend(&ExtendBatch::new(&ba.pool, &cu, &sa, &init)?), &inp)?;
        let ob = bb.run(Batch::Extend(&ExtendBatch::new(&bb.pool, &cu, &sb, &init)?), &inp)?;
        let da = ba.run(Batch::Decode(&DecodeBatch::new(&ba.pool, &sa)?), &dec)?;
        let db = bb.run(Batch::Decode(&DecodeBatch::new(&bb.pool, &sb)?), &dec)?;
        let (sta, stb) = (ba.states(&sa)?, bb.states(&sb)?);
        let tol = ctx.tol(dt, sd, 130);
        ctx.ratio(&format!("{name}: extend outputs"), &oa, &to_f64(&ob), 2.0 * tol);
        ctx.ratio(&format!("{name}: decode outputs"), &da, &to_f64(&db), 2.0 * tol);
        ctx.ratio(&format!("{name}: canonical states"), &sta, &to_f64(&stb), 2.0 * tol);
        // and both against the oracle
        let mut idx: Vec<usize> = Vec::new();
        let mut cu2 = vec![0];
        for s in 0..3 {
            idx.extend(cu[s]..cu[s + 1]);
            idx.push(cu[3] + s);
            cu2.push(idx.len());
        }
        let all = concat(&[inp.clone(), dec.clone()]).gather(&idx);
        let r = all.oracle(&ba.params, &cu2, Some(&init_states(dims.state_elems(), &before, &init)));
        ctx.ratio(&format!("{name}: {} states vs oracle", a.capabilities().backend), &sta, &r.final_state, tol);
        ctx.ratio(&format!("{name}: {} states vs oracle", b.capabilities().backend), &stb, &r.final_state, tol);
    }
    Ok(())
}

// ---------------------------------------------------------------- 7. dtypes

pub(crate) fn dtypes<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let caps = d.capabilities().clone();
    let shape = sh(1, 2, 32, 48, false);
    let dims = shape.dims()?;
    for &dt in &caps.input_dtypes {
        for &sd in &caps.state_dtypes {
            let name = format!("{} inputs {dt} state {sd}", shape.name());
            if !ctx.opts.wants(&name) {
                continue;
            }
            let seed = ctx.seed(&[dt as u64, sd as u64]);
            let mut b = Bench::new(&d, dims, 2, sd, None, dt)?;
            let slots = b.pool.alloc(2)?;
            b.randomize(&slots, seed)?;
            let before = b.states(&slots)?;
            let lens = [65usize, 7];
            let cu = cu_from_lens(&lens);
            let inp = DeltaInputs::random(&dims, cu[2] + 4, dt, seed ^ 19);
            let init = [true, false];
            let o = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu, &slots, &init)?), &inp.slice(0..cu[2]))?;
            let dec = DecodeBatch::new(&b.pool, &slots)?;
            let d1 = b.run(Batch::Decode(&dec), &inp.slice(cu[2]..cu[2] + 2))?;
            let d2 = b.run(Batch::Decode(&dec), &inp.slice(cu[2] + 2..cu[2] + 4))?;
            // reference over each sequence's whole stream
            let idx: Vec<usize> = (cu[0]..cu[1]).chain([cu[2], cu[2] + 2]).chain(cu[1]..cu[2]).chain([cu[2] + 1, cu[2] + 3]).collect();
            let cu2 = [0, lens[0] + 2, lens[0] + lens[1] + 4];
            let r = inp.gather(&idx).oracle(&b.params, &cu2, Some(&init_states(dims.state_elems(), &before, &init)));
            let per = dims.num_v_heads * dims.head_v_dim;
            let mut got = o[..cu[1] * per].to_vec();
            got.extend(&d1[..per]);
            got.extend(&d2[..per]);
            got.extend(&o[cu[1] * per..]);
            got.extend(&d1[per..]);
            got.extend(&d2[per..]);
            // outputs are stored in the input dtype, so they carry its rounding; the
            // oracle ran on the same rounded inputs, so an f32 state owes f32 accuracy
            ctx.ratio(&format!("{name}: outputs (extend + 2 decodes)"), &got, &r.o, ctx.tol(dt, sd, 70));
            ctx.ratio(&format!("{name}: final states"), &b.states(&slots)?, &r.final_state, ctx.tol(DType::F32, sd, 70));
        }
    }
    conv_dtypes(ctx, &d)
}

/// Each claimed conv-state dtype through the layer forward: extend (from a
/// random conv state), decode, verify + commit, against the oracle fed the
/// conv state as the pool holds it.
fn conv_dtypes<D: KernelDispatcher>(ctx: &mut Ctx<'_>, d: &D) -> Result<()> {
    let caps = d.capabilities().clone();
    let shape = sh(1, 2, 16, 32, false);
    let dims = shape.dims()?;
    let (dt, sd) = (Bench::default_dtype(d), Bench::default_state_dtype(d));
    for &cd in &caps.conv_dtypes {
        let name = format!("{} conv state {cd} (layer forward)", shape.name());
        if !ctx.opts.wants(&name) {
            continue;
        }
        let seed = ctx.seed(&[0xc0, cd as u64]);
        let w = LayerParams::random(&dims, seed ^ 1);
        let mut b = Bench::with_conv(d, dims, 2, sd, cd, Some(2), dt)?;
        let slots = b.pool.alloc(2)?;
        b.randomize(&slots, seed)?;
        let (per_s, per_c, per_o) = (dims.state_elems(), dims.conv_elems(), dims.num_v_heads * dims.head_v_dim);
        let st0 = b.states(&slots)?;
        let cv0 = b.convs(&slots)?;
        let lens = [40usize, 3];
        let streams: Vec<LayerInputs> = (0..2).map(|s| LayerInputs::random(&dims, lens[s] + 3, dt, seed ^ (7 + s as u64))).collect();
        let pack = |r: [std::ops::Range<usize>; 2]| {
            let (a, c) = (streams[0].slice(r[0].clone()), streams[1].slice(r[1].clone()));
            let mut all = a.clone();
            all.tokens += c.tokens;
            all.mixed_qkv.extend(&c.mixed_qkv);
            all.a.extend(&c.a);
            all.b.extend(&c.b);
            all
        };
        let o1 =
            b.layer(Batch::Extend(&ExtendBatch::new(&b.pool, &cu_from_lens(&lens), &slots, &[true, true])?), &w, &pack([0..40, 0..3]))?;
        let o2 = b.layer(Batch::Decode(&DecodeBatch::new(&b.pool, &slots)?), &w, &pack([40..41, 3..4]))?;
        let o3 = b.layer(Batch::Verify(&VerifyBatch::chain(&b.pool, &slots, 2)?), &w, &pack([41..43, 4..6]))?;
        b.commit(&CommitBatch::new(&b.pool, &slots, &[1, 0], &[])?)?;
        let params = b.params;
        let oracle = |s: usize, n: usize| {
            let idx: Vec<usize> = (0..n).collect();
            streams[s].gather(&idx).oracle(&w, &params, &[0, n], &cv0[s * per_c..(s + 1) * per_c], &st0[s * per_s..(s + 1) * per_s])
        };
        let (r0, r1) = (oracle(0, 43), oracle(1, 5));
        let mut got = o1[..40 * per_o].to_vec();
        got.extend(&o2[..per_o]);
        got.extend(&o3[..2 * per_o]);
        got.extend(&o1[40 * per_o..]);
        got.extend(&o2[per_o..]);
        got.extend(&o3[2 * per_o..3 * per_o]);
        let mut want = r0.o.clone();
        want.extend(&r1.o);
        let tol = if cd == DType::F32 { ctx.tol(dt, sd, 43) } else { ctx.tol(cd, sd, 43) };
        ctx.ratio(&format!("{name}: outputs"), &got, &want, tol);
        let mut cw = r0.conv_state.clone();
        cw.extend(&r1.conv_state);
        ctx.ratio(&format!("{name}: committed conv states"), &b.convs(&slots)?, &cw, tol);
        let mut sw = r0.state.clone();
        sw.extend(&r1.state);
        ctx.ratio(&format!("{name}: committed states"), &b.states(&slots)?, &sw, tol);
    }
    Ok(())
}

// ---------------------------------------------------------------- strides

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

// ---------------------------------------------------------------- 8. bad input

/// Runs `call`, expects an error `want` accepts, and the pool digest unchanged.
fn expect_err<D: KernelDispatcher>(
    ctx: &mut Ctx<'_>,
    pool: &PoolOf<D>,
    case: &str,
    want: &str,
    accept: impl Fn(&Error) -> bool,
    call: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let before = pool.digest()?;
    let r = call();
    let after = pool.digest()?;
    let (ok, detail) = match &r {
        Ok(()) => (false, format!("accepted; expected {want}")),
        Err(e) if accept(e) => (before == after, if before == after { format!("{e}") } else { "pool bytes changed".into() }),
        Err(e) => (false, format!("expected {want}, got {e:?}")),
    };
    ctx.exact(case, ok, detail);
    Ok(())
}

pub(crate) fn bad_input<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let d = make();
    let caps = d.capabilities().clone();
    let shape = sh(1, 2, 16, 32, false);
    let dims = shape.dims()?;
    let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
    let seed = ctx.seed(&[]);
    let draft = 2;
    let mut b = Bench::new(&d, dims, 5, sd, Some(draft), dt)?;
    let slots = b.pool.alloc(4)?;
    b.randomize(&slots, seed)?;
    let (x, y) = (slots[0], slots[1]);
    let cu = [0usize, 3, 5];
    let inp = DeltaInputs::random(&dims, 5, dt, seed ^ 29);
    let eb = ExtendBatch::new(&b.pool, &cu, &[x, y], &[true, true])?;
    let db = DecodeBatch::new(&b.pool, &[x, y])?;
    let vb = VerifyBatch::chain(&b.pool, &[x, y], draft)?;
    let inp_dec = inp.slice(0..2);
    let inp_ver = inp.slice(0..4);
    let n = "bad input";
    let is = |f: fn(&Error) -> bool| f;

    // layout (runtime): a pool of the wrong layout for this backend cannot be made
    let mut flipped = caps.clone();
    flipped.native_layout = match D::Layout::KIND {
        LayoutKind::KMajor => LayoutKind::VMajor,
        LayoutKind::VMajor => LayoutKind::KMajor,
    };
    let r = StatePool::<D::Memory, D::Layout>::new(d.memory().clone(), b.pool.geometry().config, &flipped);
    ctx.exact(
        &format!("{n}: layout: pool with another layout's capabilities"),
        matches!(r, Err(Error::LayoutMismatch { .. })),
        format!("{:?}", r.err()),
    );
    // dtype: a state dtype the backend does not claim
    for sdt in [DType::F32, DType::BF16] {
        if !caps.state_dtypes.contains(&sdt) {
            let r = d.new_pool(crate::pool::PoolConfig::new(1, 1, dims).with_state_dtype(sdt));
            ctx.exact(
                &format!("{n}: dtype: unclaimed state dtype {sdt}"),
                matches!(r, Err(Error::UnsupportedDType { .. })),
                format!("{:?}", r.err()),
            );
        }
    }
    // dtype: g must be f32; an unclaimed input dtype
    for (label, op) in [("extend", Batch::Extend(&eb)), ("decode", Batch::Decode(&db)), ("verify", Batch::Verify(&vb))] {
        let data = match op {
            Batch::Extend(_) => &inp,
            Batch::Decode(_) => &inp_dec,
            Batch::Verify(_) => &inp_ver,
        };
        let mut st = b.stage(data)?;
        let tt = data.tokens;
        let g16 = DeviceTensor::from_f32(d.memory(), DType::BF16, &[tt, dims.num_v_heads], &data.g)?;
        let params = b.params;
        let digest = b.pool.digest()?;
        let mut io = st.io(params);
        io.g = g16.view();
        let r = b.run_io(op, io);
        let ok = matches!(r, Err(Error::DTypeMismatch { .. })) && b.pool.digest()? == digest;
        ctx.exact(&format!("{n}: dtype: {label} with bf16 g"), ok, format!("{:?}", r.err()));
        if let Some(&bad) = [DType::F32, DType::BF16, DType::F16].iter().find(|x| !caps.input_dtypes.contains(x)) {
            let mut st2 = b.stage_as(data, bad)?;
            let r = b.run_io(op, st2.io(params));
            let ok = matches!(r, Err(Error::DTypeMismatch { .. })) && b.pool.digest()? == digest;
            ctx.exact(&format!("{n}: dtype: {label} with unclaimed input dtype {bad}"), ok, format!("{:?}", r.err()));
        }
        // shape: q with K+1, o of the wrong shape, tokens not matching the batch
        let qbad = DeviceTensor::from_f32(
            d.memory(),
            dt,
            &[tt, dims.num_k_heads, dims.head_k_dim + 1],
            &vec![0.5; tt * dims.num_k_heads * (dims.head_k_dim + 1)],
        )?;
        let mut io = st.io(params);
        io.q = qbad.view();
        let r = b.run_io(op, io);
        ctx.exact(
            &format!("{n}: shape: {label} with q of K+1"),
            matches!(r, Err(Error::ShapeMismatch { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        let mut obad = DeviceTensor::zeros(d.memory(), dt, &[tt, dims.num_v_heads, dims.head_v_dim + 1])?;
        let mut io = st.io(params);
        io.o = obad.view_mut();
        let r = b.run_io(op, io);
        ctx.exact(
            &format!("{n}: shape: {label} with o of V+1"),
            matches!(r, Err(Error::ShapeMismatch { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        let mut short = b.stage(&data.slice(0..tt - 1))?;
        let r = b.run_io(op, short.io(params));
        ctx.exact(
            &format!("{n}: shape: {label} with T-1 tokens"),
            matches!(r, Err(Error::ShapeMismatch { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        // stride: innermost stride 2 on k
        let kwide = DeviceTensor::from_f32(
            d.memory(),
            dt,
            &[tt * dims.num_k_heads * dims.head_k_dim * 2],
            &vec![0.25; tt * dims.num_k_heads * dims.head_k_dim * 2],
        )?;
        let kv = kwide.view().restride(
            0,
            &[tt, dims.num_k_heads, dims.head_k_dim],
            &[dims.num_k_heads * dims.head_k_dim * 2, dims.head_k_dim * 2, 2],
        )?;
        let mut io = st.io(params);
        io.k = kv;
        let r = b.run_io(op, io);
        ctx.exact(
            &format!("{n}: stride: {label} with innermost stride 2"),
            matches!(r, Err(Error::BadStrides { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        // index: layer out of range
        b.layer = LAYERS;
        let r = b.run_io(op, st.io(params));
        b.layer = 1;
        ctx.exact(
            &format!("{n}: index: {label} on layer {LAYERS} of {LAYERS}"),
            matches!(r, Err(Error::LayerOutOfRange { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
        // device: host tensors for a device backend
        if caps.device != crate::tensor::Device::Host {
            let qh: Vec<f32> = data.q.clone();
            let qv = crate::tensor::TensorRef::from_slice(&qh, &[tt, dims.num_k_heads, dims.head_k_dim])?;
            let mut io = st.io(params);
            io.q = qv;
            let r = b.run_io(op, io);
            ctx.exact(
                &format!("{n}: device: {label} with a host q"),
                matches!(r, Err(Error::DeviceMismatch { .. })) && b.pool.digest()? == digest,
                format!("{:?}", r.err()),
            );
        }
    }
    // foreign batch: validated against another pool of the same backend
    {
        let other = Bench::new(&d, dims, 5, sd, Some(draft), dt)?;
        let os = other.pool.alloc(2)?;
        let feb = ExtendBatch::new(&other.pool, &cu, &os, &[true, true])?;
        let fdb = DecodeBatch::new(&other.pool, &os)?;
        let fvb = VerifyBatch::chain(&other.pool, &os, draft)?;
        let fcb = CommitBatch::new(&other.pool, &os, &[0, 1], &[])?;
        for (label, op, data) in
            [("extend", Batch::Extend(&feb), &inp), ("decode", Batch::Decode(&fdb), &inp_dec), ("verify", Batch::Verify(&fvb), &inp_ver)]
        {
            let digest = b.pool.digest()?;
            let r = b.run(op, data).map(|_| ());
            ctx.exact(
                &format!("{n}: foreign batch: {label}"),
                matches!(r, Err(Error::ForeignBatch { .. })) && b.pool.digest()? == digest,
                format!("{:?}", r.err()),
            );
        }
        let digest = b.pool.digest()?;
        let r = b.commit(&fcb);
        ctx.exact(
            &format!("{n}: foreign batch: commit"),
            matches!(r, Err(Error::ForeignBatch { .. })) && b.pool.digest()? == digest,
            format!("{:?}", r.err()),
        );
    }
    // batch construction: cu_seqlens, slots, draft / accepted counts, snapshot positions
    let never = {
        let s = b.pool.alloc(1)?;
        b.pool.free(&s)?;
        s[0]
    };
    let p = &b.pool;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: cu_seqlens not increasing"),
        "BadCuSeqlens",
        is(|e| matches!(e, Error::BadCuSeqlens { .. })),
        || ExtendBatch::new(p, &[0, 3, 3], &[x, y], &[true, true]).map(|_| ()),
    )?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: cu_seqlens not from 0"),
        "BadCuSeqlens",
        is(|e| matches!(e, Error::BadCuSeqlens { .. })),
        || ExtendBatch::new(p, &[2, 3], &[x], &[true]).map(|_| ()),
    )?;
    expect_err::<D>(ctx, p, &format!("{n}: slot: padding slot"), "PaddingSlot", is(|e| matches!(e, Error::PaddingSlot { .. })), || {
        DecodeBatch::new(p, &[Slot::new(0, 0)]).map(|_| ())
    })?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: slot: out of range"),
        "SlotOutOfRange",
        is(|e| matches!(e, Error::SlotOutOfRange { .. })),
        || DecodeBatch::new(p, &[Slot::new(1000, 0)]).map(|_| ()),
    )?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: slot: not allocated"),
        "SlotNotAllocated",
        is(|e| matches!(e, Error::SlotNotAllocated { .. })),
        || DecodeBatch::new(p, &[x, never]).map(|_| ()),
    )?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: slot: twice in one batch"),
        "DuplicateSlot",
        is(|e| matches!(e, Error::DuplicateSlot { .. })),
        || ExtendBatch::new(p, &cu, &[y, y], &[true, true]).map(|_| ()),
    )?;
    expect_err::<D>(ctx, p, &format!("{n}: draft count"), "DraftMismatch", is(|e| matches!(e, Error::DraftMismatch { .. })), || {
        VerifyBatch::chain(p, &[x], draft + 1).map(|_| ())
    })?;
    expect_err::<D>(ctx, p, &format!("{n}: tree parent"), "BadParent", is(|e| matches!(e, Error::BadParent { .. })), || {
        VerifyBatch::tree(p, &[x], draft, &[-1, 1]).map(|_| ())
    })?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: accepted >= D"),
        "AcceptedOutOfRange",
        is(|e| matches!(e, Error::AcceptedOutOfRange { .. })),
        || CommitBatch::new(p, &[x], &[draft], &[]).map(|_| ()),
    )?;
    expect_err::<D>(
        ctx,
        p,
        &format!("{n}: snapshot position past the extend"),
        "BadSnapshot",
        is(|e| matches!(e, Error::BadSnapshot { .. })),
        || eb.clone().with_snapshots(p, &[Snapshot { seq: 1, position: 3, slot: slots[2] }]).map(|_| ()),
    )?;
    expect_err::<D>(ctx, p, &format!("{n}: snapshot position 0"), "BadSnapshot", is(|e| matches!(e, Error::BadSnapshot { .. })), || {
        eb.clone().with_snapshots(p, &[Snapshot { seq: 0, position: 0, slot: slots[2] }]).map(|_| ())
    })?;
    // slot freed after validation: the kernel re-checks
    let eb2 = ExtendBatch::new(&b.pool, &cu, &[x, slots[3]], &[true, true])?;
    b.pool.free(&[slots[3]])?;
    let digest = b.pool.digest()?;
    let r = b.run(Batch::Extend(&eb2), &inp).map(|_| ());
    ctx.exact(
        &format!("{n}: slot freed after the batch was validated"),
        matches!(r, Err(Error::SlotNotAllocated { .. })) && b.pool.digest()? == digest,
        format!("{:?}", r.err()),
    );
    // through the layer forward: a bad mixed_qkv leaves conv and recurrent state unchanged
    let w = LayerParams::random(&dims, seed ^ 31);
    let mut li = LayerInputs::random(&dims, 5, dt, seed ^ 37);
    li = li.slice(0..4);
    let digest = b.pool.digest()?;
    let r = b.layer(Batch::Extend(&eb), &w, &li).map(|_| ());
    ctx.exact(
        &format!("{n}: layer forward with T-1 tokens"),
        matches!(r, Err(Error::ShapeMismatch { .. })) && b.pool.digest()? == digest,
        format!("{:?}", r.err()),
    );
    // the separate conv and gate entry points
    let m = d.memory();
    let c = dims.conv_dim();
    let cw = DeviceTensor::from_f32(m, DType::F32, &[c, dims.conv_width], &w.conv_weight)?;
    let cw16 = DeviceTensor::from_f32(m, DType::BF16, &[c, dims.conv_width], &w.conv_weight)?;
    let db2 = DecodeBatch::new(&b.pool, &[x, y])?;
    let vb2 = VerifyBatch::chain(&b.pool, &[x, y], draft)?;
    for (label, tokens) in [("conv_extend", 5usize), ("conv_update", 2), ("conv_verify", 4)] {
        for (what, x_tokens, x_dim, weight_bf16) in
            [("x of T-1 tokens", tokens - 1, c, false), ("x of conv_dim+1", tokens, c + 1, false), ("bf16 weight", tokens, c, true)]
        {
            let xin = DeviceTensor::from_f32(m, dt, &[x_tokens, x_dim], &vec![0.5; x_tokens * x_dim])?;
            let mut out = DeviceTensor::zeros(m, dt, &[tokens, c])?;
            let io =
                crate::ConvIo { x: xin.view(), weight: if weight_bf16 { cw16.view() } else { cw.view() }, bias: None, out: out.view_mut() };
            let digest = b.pool.digest()?;
            let r = match label {
                "conv_extend" => d.conv_extend(&mut b.pool, 1, &eb, io),
                "conv_update" => d.conv_update(&mut b.pool, 1, &db2, io),
                _ => d.conv_verify(&mut b.pool, 1, &vb2, io),
            };
            let ok =
                if weight_bf16 { matches!(r, Err(Error::DTypeMismatch { .. })) } else { matches!(r, Err(Error::ShapeMismatch { .. })) };
            ctx.exact(&format!("{n}: {label} with {what}"), ok && b.pool.digest()? == digest, format!("{:?}", r.err()));
        }
    }
    let hv = dims.num_v_heads;
    let ab = DeviceTensor::from_f32(m, dt, &[5, hv], &vec![0.1; 5 * hv])?;
    let al16 = DeviceTensor::from_f32(m, DType::BF16, &[hv], &w.a_log)?;
    let al = DeviceTensor::from_f32(m, DType::F32, &[hv], &w.a_log)?;
    let dtb = DeviceTensor::from_f32(m, DType::F32, &[hv], &w.dt_bias)?;
    let (mut g, mut beta) = (DeviceTensor::zeros(m, DType::F32, &[5, hv])?, DeviceTensor::zeros(m, DType::F32, &[5, hv])?);
    let io = crate::GateIo { a: ab.view(), b: ab.view(), a_log: al16.view(), dt_bias: dtb.view(), g: g.view_mut(), beta: beta.view_mut() };
    let r = d.gate(&dims, io);
    ctx.exact(&format!("{n}: gate with bf16 A_log"), matches!(r, Err(Error::DTypeMismatch { .. })), format!("{:?}", r.err()));
    let mut g4 = DeviceTensor::zeros(m, DType::F32, &[4, hv])?;
    let io = crate::GateIo { a: ab.view(), b: ab.view(), a_log: al.view(), dt_bias: dtb.view(), g: g4.view_mut(), beta: beta.view_mut() };
    let r = d.gate(&dims, io);
    ctx.exact(&format!("{n}: gate with g of T-1 tokens"), matches!(r, Err(Error::ShapeMismatch { .. })), format!("{:?}", r.err()));
    Ok(())
}

// ---------------------------------------------------------------- the layer forward

pub(crate) fn layer_forward<D: KernelDispatcher>(ctx: &mut Ctx<'_>, make: &dyn Fn() -> D) -> Result<()> {
    let draft = 3usize;
    for (si, shape) in [sh(1, 2, 16, 32, false), sh(2, 4, 32, 16, true)].iter().enumerate() {
        let name = format!("{} layer forward", shape.name());
        if !ctx.opts.wants(&name) {
            continue;
        }
        let d = make();
        let dims = shape.dims()?;
        let (dt, sd) = (Bench::default_dtype(&d), Bench::default_state_dtype(&d));
        let seed = ctx.seed(&[si as u64]);
        let w = LayerParams::random(&dims, seed ^ 41);
        let lens = [70usize, 3, 64];
        let first = [33usize, 2, 40];
        let init = [true, false, true];
        let ndec = 2;
        let n = 3;
        // one stream of tokens per sequence: extend tokens, decode tokens, drafts
        let streams: Vec<LayerInputs> =
            (0..n).map(|s| LayerInputs::random(&dims, lens[s] + ndec + draft, dt, seed ^ (43 + s as u64))).collect();
        let mut b = Bench::new(&d, dims, n + 1, sd, Some(draft), dt)?;
        let slots = b.pool.alloc(n)?;
        let snap = b.pool.alloc(1)?[0];
        b.randomize(&slots, seed)?;
        b.randomize(&[snap], seed ^ 47)?;
        let (per_s, per_c, per_o) = (dims.state_elems(), dims.conv_elems(), dims.num_v_heads * dims.head_v_dim);
        let st0 = init_states(per_s, &b.states(&slots)?, &init);
        let cv0 = init_states(per_c, &b.convs(&slots)?, &init);
        let params = b.params;
        let oracle = |s: usize, idx: &[usize]| {
            streams[s].gather(idx).oracle(&w, &params, &[0, idx.len()], &cv0[s * per_c..(s + 1) * per_c], &st0[s * per_s..(s + 1) * per_s])
        };
        let tol = ctx.tol(dt, sd, 70);
        let pack = |ranges: &[std::ops::Range<usize>]| {
            let parts: Vec<LayerInputs> = ranges.iter().enumerate().map(|(s, r)| streams[s].slice(r.clone())).collect();
            let mut all = parts[0].clone();
            for p in &parts[1..] {
                all.tokens += p.tokens;
                all.mixed_qkv.extend(&p.mixed_qkv);
                all.a.extend(&p.a);
                all.b.extend(&p.b);
            }
            all
        };
        // chunk 1, chunk 2 (with a snapshot of sequence 0 ten tokens in)
        let r1: Vec<_> = (0..n).map(|s| 0..first[s]).collect();
        let o1 = b.layer(Batch::Extend(&ExtendBatch::new(&b.pool, &cu_from_lens(&first), &slots, &init)?), &w, &pack(&r1))?;
        let second: Vec<usize> = (0..n).map(|s| lens[s] - first[s]).collect();
        let r2: Vec<_> = (0..n).map(|s| first[s]..lens[s]).collect();
        let eb2 = ExtendBatch::new(&b.pool, &cu_from_lens(&second), &slots, &[true; 3])?
            .with_snapshots(&b.pool, &[Snapshot { seq: 0, position: 10, slot: snap }])?;
        let o2 = b.layer(Batch::Extend(&eb2), &w, &pack(&r2))?;
        // compare per sequence
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let (mut off1, mut off2) = (0, 0);
        for s in 0..n {
            got.extend(&o1[off1 * per_o..(off1 + first[s]) * per_o]);
            got.extend(&o2[off2 * per_o..(off2 + second[s]) * per_o]);
            off1 += first[s];
            off2 += second[s];
            want.extend(oracle(s, &(0..lens[s]).collect::<Vec<_>>()).o);
        }
        ctx.ratio(&format!("{name}: chunked extend outputs (conv + gate + delta)"), &got, &want, tol);
        let full: Vec<_> = (0..n).map(|s| oracle(s, &(0..lens[s]).collect::<Vec<_>>())).collect();
        let st_want: Vec<f64> = full.iter().flat_map(|r| r.state.iter().copied()).collect();
        let cv_want: Vec<f64> = full.iter().flat_map(|r| r.conv_state.iter().copied()).collect();
        ctx.ratio(&format!("{name}: states after extend"), &b.states(&slots)?, &st_want, tol);
        ctx.ratio(&format!("{name}: conv states after extend"), &b.convs(&slots)?, &cv_want, tol);
        let sr = oracle(0, &(0..first[0] + 10).collect::<Vec<_>>());
        ctx.ratio(&format!("{name}: snapshot state (seq 0 at {})", first[0] + 10), &b.state(snap)?, &sr.state, tol);
        ctx.ratio(&format!("{name}: snapshot conv state"), &b.conv(snap)?, &sr.conv_state, tol);
        // decode
        let dec = DecodeBatch::new(&b.pool, &slots)?;
        for t in 0..ndec {
            let r: Vec<_> = (0..n).map(|s| lens[s] + t..lens[s] + t + 1).collect();
            let o = b.layer(Batch::Decode(&dec), &w, &pack(&r))?;
            let want: Vec<f64> = (0..n)
                .flat_map(|s| {
                    let rr = oracle(s, &(0..lens[s] + t + 1).collect::<Vec<_>>());
                    rr.o[(lens[s] + t) * per_o..].to_vec()
                })
                .collect();
            ctx.ratio(&format!("{name}: decode step {t} outputs"), &o, &want, tol);
        }
        let pre: Vec<usize> = (0..n).map(|s| lens[s] + ndec).collect();
        let full: Vec<_> = (0..n).map(|s| oracle(s, &(0..pre[s]).collect::<Vec<_>>())).collect();
        let st_want: Vec<f64> = full.iter().flat_map(|r| r.state.iter().copied()).collect();
        let cv_want: Vec<f64> = full.iter().flat_map(|r| r.conv_state.iter().copied()).collect();
        ctx.ratio(&format!("{name}: states after decode"), &b.states(&slots)?, &st_want, tol);
        ctx.ratio(&format!("{name}: conv states after decode"), &b.convs(&slots)?, &cv_want, tol);
        // verify (chain, chain, tree) and commit of every step
        let parents: Vec<i64> = vec![-1, 0, 1, -1, 0, 1, -1, -1, 0];
        let saved: Vec<HostState> = slots.iter().map(|&s| b.pool.export(s)).collect::<Result<_>>()?;
        let vb = VerifyBatch::tree(&b.pool, &slots, draft, &parents)?;
        let r: Vec<_> = (0..n).map(|s| pre[s]..pre[s] + draft).collect();
        let o = b.layer(Batch::Verify(&vb), &w, &pack(&r))?;
        let after: Vec<HostState> = slots.iter().map(|&s| b.pool.export(s)).collect::<Result<_>>()?;
        ctx.exact(&format!("{name}: verify leaves main conv and recurrent state untouched"), after == saved, String::new());
        let mut want = Vec::new();
        let mut refs = Vec::new();
        for s in 0..n {
            for t in 0..draft {
                let mut idx: Vec<usize> = (0..pre[s]).collect();
                idx.extend(path(&parents[s * draft..(s + 1) * draft], t).iter().map(|&x| pre[s] + x));
                let rr = oracle(s, &idx);
                want.extend(&rr.o[(idx.len() - 1) * per_o..]);
                refs.push(rr);
            }
        }
        ctx.ratio(&format!("{name}: verify outputs (chains and a tree)"), &o, &want, tol);
        for a in 0..draft {
            let acc: Vec<usize> = (0..n).map(|s| (a + s) % draft).collect();
            b.commit(&CommitBatch::new(&b.pool, &slots, &acc, &[])?)?;
            for s in 0..n {
                let rr = &refs[s * draft + acc[s]];
                ctx.ratio(&format!("{name}: seq {s} commit of step {}: state", acc[s]), &b.state(slots[s])?, &rr.state, tol);
                ctx.ratio(&format!("{name}: seq {s} commit of step {}: conv window", acc[s]), &b.conv(slots[s])?, &rr.conv_state, tol);
            }
            // Restoring the main state makes the verify stale: verify again.
            for (sl, st) in slots.iter().zip(&saved) {
                b.pool.import(*sl, st)?;
            }
            b.layer(Batch::Verify(&vb), &w, &pack(&r))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- single cases for property tests

/// One extend of sequences of `lens` (with `init` flags) vs the oracle, then
/// a verify of `parents.len() / lens.len()` drafts per sequence (a tree) and
/// the commit of `accepted`, vs decoding the accepted path.
pub(crate) fn one_case<D: KernelDispatcher>(
    ctx: &mut Ctx<'_>,
    d: &D,
    dims: ModelDims,
    lens: &[usize],
    init: &[bool],
    parents: &[i64],
    accepted: &[usize],
) -> Result<()> {
    let n = lens.len();
    let draft = parents.len() / n;
    let (dt, sd) = (Bench::default_dtype(d), Bench::default_state_dtype(d));
    let seed = ctx.seed(&[lens.len() as u64, lens.iter().sum::<usize>() as u64]);
    let mut b = Bench::new(d, dims, n, sd, (draft > 0).then_some(draft), dt)?;
    let slots = b.pool.alloc(n)?;
    b.randomize(&slots, seed)?;
    let before = b.states(&slots)?;
    let cu = cu_from_lens(lens);
    let inp = DeltaInputs::random(&dims, cu[n], dt, seed ^ 1);
    let o = b.run(Batch::Extend(&ExtendBatch::new(&b.pool, &cu, &slots, init)?), &inp)?;
    let per = dims.state_elems();
    let r = inp.oracle(&b.params, &cu, Some(&init_states(per, &before, init)));
    let tol = ctx.tol(dt, sd, *lens.iter().max().unwrap_or(&0));
    let name = format!("lens {lens:?} init {init:?}");
    ctx.ratio(&format!("{name}: extend outputs"), &o, &r.o, tol);
    let s0 = b.states(&slots)?;
    ctx.ratio(&format!("{name}: extend states"), &s0, &r.final_state, tol);
    if draft == 0 {
        return Ok(());
    }
    let drafts = DeltaInputs::random(&dims, n * draft, dt, seed ^ 2);
    b.run(Batch::Verify(&VerifyBatch::tree(&b.pool, &slots, draft, parents)?), &drafts)?;
    b.commit(&CommitBatch::new(&b.pool, &slots, accepted, &[])?)?;
    for i in 0..n {
        let p: Vec<usize> = path(&parents[i * draft..(i + 1) * draft], accepted[i]).iter().map(|&x| i * draft + x).collect();
        let rr = drafts.gather(&p).oracle(&b.params, &[0, p.len()], Some(&s0[i * per..(i + 1) * per]));
        ctx.ratio(
            &format!("{name}: request {i} tree {:?} commit of {}", &parents[i * draft..(i + 1) * draft], accepted[i]),
            &b.state(slots[i])?,
            &rr.final_state,
            tol,
        );
    }
    Ok(())
}
