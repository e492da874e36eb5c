//! An engine scenario over two workers (typically a K-major and a V-major
//! backend): requests arrive over time, prefill in chunks under a per-step
//! token budget, hit a prefix cache filled from extend snapshots, decode,
//! verify drafts (chains and trees) and commit a random accepted step,
//! migrate between the workers mid-flight, finish, and leave their slots to
//! later requests. Every output and every final state is compared with the
//! f64 oracle run over the same accepted tokens.

use crate::checks::Ctx;
use crate::gen::{rng, LayerInputs, LayerParams};
use crate::harness::{Batch, Bench};
use crate::{CaseReport, Check, SuiteOptions};
use deltanet_core::{
    CommitBatch, DType, DecodeBatch, ExtendBatch, KernelDispatcher, MambaStatePool, ModelDims, Result, Slot, Snapshot, SpecMode,
    VerifyBatch,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Draft tokens per verify.
const DRAFT: usize = 3;
/// Prefill tokens per worker per step.
const BUDGET: usize = 96;
/// Length of the shared prompt prefix (prefix cache).
const PREFIX: usize = 70;

struct Req {
    id: usize,
    prompt: LayerInputs,
    uses_prefix: bool,
    arrival: usize,
    worker: usize,
    slot: Option<Slot>,
    /// Prompt tokens already in the slot's state.
    pos: usize,
    gen_left: usize,
    /// Accepted tokens so far (prompt, decoded, accepted drafts).
    hist: LayerInputs,
    /// Outputs for `hist[out_from..]`.
    outs: Vec<f32>,
    out_from: usize,
    /// Whether the slot holds this request's state yet.
    has_state: bool,
    story: Vec<String>,
    done: bool,
}

fn cat(a: &LayerInputs, b: &LayerInputs) -> LayerInputs {
    let mut all = a.clone();
    all.tokens += b.tokens;
    all.mixed_qkv.extend(&b.mixed_qkv);
    all.a.extend(&b.a);
    all.b.extend(&b.b);
    all
}

fn empty(dims: &ModelDims) -> LayerInputs {
    LayerInputs { dims: *dims, tokens: 0, mixed_qkv: vec![], a: vec![], b: vec![] }
}

struct World {
    dims: ModelDims,
    w: LayerParams,
    rng: ChaCha8Rng,
    cache: Option<Slot>,
    cache_filled: bool,
    state_dtype: DType,
    prefix: LayerInputs,
}

impl World {
    fn oracle(&self, x: &LayerInputs, params: &deltanet_core::DeltaParams) -> crate::gen::LayerOracle {
        let z_conv = vec![0.0; self.dims.conv_elems()];
        let z_state = vec![0.0; self.dims.state_elems()];
        x.oracle(&self.w, params, &[0, x.tokens], &z_conv, &z_state)
    }
    fn token(&mut self, n: usize) -> LayerInputs {
        let s = self.rng.gen();
        LayerInputs::random(&self.dims, n, DType::F32, s)
    }
}

/// One step of one worker: a prefill batch under the budget, a decode batch, a verify batch + commit.
fn worker_step<D: KernelDispatcher>(
    ctx: &mut Ctx<'_>,
    world: &mut World,
    b: &mut Bench<'_, D>,
    wid: usize,
    reqs: &mut [Req],
) -> Result<()> {
    let per_o = world.dims.num_v_heads * world.dims.head_v_dim;
    let sd = world.state_dtype;
    let tol_of = |ctx: &Ctx<'_>, len: usize| ctx.tol(DType::F32, sd, len);
    // prefill, FIFO, under the budget
    let mut budget = BUDGET;
    let mut chunk: Vec<(usize, usize, usize)> = Vec::new(); // (req index, from, to)
    for (i, r) in reqs.iter().enumerate() {
        if r.worker == wid && r.slot.is_some() && !r.done && r.pos < r.prompt.tokens && budget > 0 {
            let n = (r.prompt.tokens - r.pos).min(budget);
            budget -= n;
            chunk.push((i, r.pos, r.pos + n));
        }
    }
    let prefilled: Vec<usize> = chunk.iter().map(|c| c.0).collect();
    if !chunk.is_empty() {
        let mut cu = vec![0];
        let mut x = empty(&world.dims);
        let mut snaps = Vec::new();
        for (j, &(i, from, to)) in chunk.iter().enumerate() {
            let r = &reqs[i];
            cu.push(cu[j] + to - from);
            x = cat(&x, &r.prompt.slice(from..to));
            if wid == 0 && r.uses_prefix && !world.cache_filled && from < PREFIX && PREFIX <= to {
                snaps.push(Snapshot { seq: j, position: PREFIX - from, slot: world.cache.expect("cache slot") });
            }
        }
        let slots: Vec<Slot> = chunk.iter().map(|c| reqs[c.0].slot.unwrap()).collect();
        let flags: Vec<bool> = chunk.iter().map(|c| reqs[c.0].has_state).collect();
        let batch = ExtendBatch::new(&b.pool, &cu, &slots, &flags)?.with_snapshots(&b.pool, &snaps)?;
        let o = b.layer(Batch::Extend(&batch), &world.w, &x)?;
        for (j, &(i, from, to)) in chunk.iter().enumerate() {
            let r = &mut reqs[i];
            r.outs.extend(&o[cu[j] * per_o..cu[j + 1] * per_o]);
            r.hist = cat(&r.hist, &r.prompt.slice(from..to));
            r.pos = to;
            r.has_state = true;
            r.story.push(format!("w{wid} prefill {from}..{to}"));
        }
        if !snaps.is_empty() {
            world.cache_filled = true;
        }
    }
    // generation: decode or verify, chosen at random
    let gen: Vec<usize> = (0..reqs.len())
        .filter(|&i| {
            let r = &reqs[i];
            r.worker == wid && r.slot.is_some() && !r.done && r.pos == r.prompt.tokens && r.gen_left > 0 && !prefilled.contains(&i)
        })
        .collect();
    let (mut dec, mut ver) = (Vec::new(), Vec::new());
    for i in gen {
        if world.rng.gen_bool(0.5) {
            dec.push(i)
        } else {
            ver.push(i)
        }
    }
    if !dec.is_empty() {
        let slots: Vec<Slot> = dec.iter().map(|&i| reqs[i].slot.unwrap()).collect();
        let x = world.token(dec.len());
        let o = b.layer(Batch::Decode(&DecodeBatch::new(&b.pool, &slots)?), &world.w, &x)?;
        for (j, &i) in dec.iter().enumerate() {
            let r = &mut reqs[i];
            r.hist = cat(&r.hist, &x.slice(j..j + 1));
            r.outs.extend(&o[j * per_o..(j + 1) * per_o]);
            r.gen_left -= 1;
            r.story.push(format!("w{wid} decode"));
        }
    }
    if !ver.is_empty() {
        let slots: Vec<Slot> = ver.iter().map(|&i| reqs[i].slot.unwrap()).collect();
        let mut parents = Vec::new();
        let mut kinds = Vec::new();
        for _ in &ver {
            if world.rng.gen_bool(0.5) {
                parents.extend([-1i64, 0, 1]);
                kinds.push("chain");
            } else {
                let p = [[-1i64, -1, 0], [-1, 0, 0], [-1, -1, 1]][world.rng.gen_range(0..3)];
                parents.extend(p);
                kinds.push("tree");
            }
        }
        let x = world.token(ver.len() * DRAFT);
        let vb = VerifyBatch::tree(&b.pool, &slots, &parents)?;
        let o = b.layer(Batch::Verify(&vb), &world.w, &x)?;
        let params = b.params;
        let mut accepted = Vec::new();
        for (j, &i) in ver.iter().enumerate() {
            let par = &parents[j * DRAFT..(j + 1) * DRAFT];
            // every step's output against the oracle of history + its path
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for t in 0..DRAFT {
                let p: Vec<usize> = crate::checks::path(par, t).iter().map(|&s| j * DRAFT + s).collect();
                let full = cat(&reqs[i].hist, &x.gather(&p));
                let r = world.oracle(&full, &params);
                got.extend(&o[(j * DRAFT + t) * per_o..(j * DRAFT + t + 1) * per_o]);
                want.extend(&r.o[(full.tokens - 1) * per_o..]);
            }
            let tol = tol_of(ctx, reqs[i].hist.tokens + DRAFT);
            ctx.ratio(
                &format!("engine: request {} w{wid} verify ({}) outputs at {} tokens", reqs[i].id, kinds[j], reqs[i].hist.tokens),
                &got,
                &want,
                tol,
            );
            let a = world.rng.gen_range(0..DRAFT);
            accepted.push(a);
            let p: Vec<usize> = crate::checks::path(par, a).iter().map(|&s| j * DRAFT + s).collect();
            let r = &mut reqs[i];
            r.hist = cat(&r.hist, &x.gather(&p));
            for &s in &p {
                r.outs.extend(&o[s * per_o..(s + 1) * per_o]);
            }
            r.gen_left = r.gen_left.saturating_sub(p.len());
            r.story.push(format!("w{wid} verify {} accept {a}", kinds[j]));
        }
        b.commit(&CommitBatch::new(&b.pool, &slots, &accepted.iter().map(|&a| Some(a)).collect::<Vec<_>>(), &[])?)?;
    }
    // finished requests: compare everything, free the slot
    for r in reqs.iter_mut().filter(|r| r.worker == wid && !r.done && r.slot.is_some() && r.pos == r.prompt.tokens && r.gen_left == 0) {
        finish(ctx, world, b, r)?;
    }
    Ok(())
}

fn finish<D: KernelDispatcher>(ctx: &mut Ctx<'_>, world: &World, b: &mut Bench<'_, D>, r: &mut Req) -> Result<()> {
    let per_o = world.dims.num_v_heads * world.dims.head_v_dim;
    let slot = r.slot.take().expect("finishing a request with a slot");
    let ref_ = world.oracle(&r.hist, &b.params);
    let tol = ctx.tol(DType::F32, world.state_dtype, r.hist.tokens);
    let name = format!(
        "engine: request {} ({} tokens{}; {})",
        r.id,
        r.hist.tokens,
        if r.out_from > 0 { ", prefix-cache hit" } else { "" },
        r.story.join(", ")
    );
    ctx.ratio(&format!("{name}: outputs"), &r.outs, &ref_.o[r.out_from * per_o..], tol);
    ctx.ratio(&format!("{name}: final state"), &b.state(slot)?, &ref_.state, tol);
    ctx.ratio(&format!("{name}: final conv state"), &b.conv(slot)?, &ref_.conv_state, tol);
    b.pool.free(&[slot])?;
    r.done = true;
    Ok(())
}

/// Runs the scenario with worker 0 on `a` and worker 1 on `b`; returns one
/// report per comparison. Both must claim f32 inputs and f32 state.
pub fn engine_scenario<A: KernelDispatcher, B: KernelDispatcher>(a: &A, b: &B, opts: &SuiteOptions) -> Vec<CaseReport> {
    engine_scenario_in(a, b, DType::F32, opts)
}

/// [`engine_scenario`] with pools of `state_dtype` recurrent state (f32 inputs),
/// held to that dtype's tolerance.
pub fn engine_scenario_in<A: KernelDispatcher, B: KernelDispatcher>(
    a: &A,
    b: &B,
    state_dtype: DType,
    opts: &SuiteOptions,
) -> Vec<CaseReport> {
    engine_scenario_mode(a, b, state_dtype, SpecMode::Scratch, opts)
}

/// [`engine_scenario_in`] with both workers' pools in speculative `mode`.
pub fn engine_scenario_mode<A: KernelDispatcher, B: KernelDispatcher>(
    a: &A,
    b: &B,
    state_dtype: DType,
    mode: SpecMode,
    opts: &SuiteOptions,
) -> Vec<CaseReport> {
    let mut out = Vec::new();
    let mut ctx = Ctx { check: Check::LayerForward, opts, out: &mut out };
    if let Err(e) = run(&mut ctx, a, b, state_dtype, mode) {
        ctx.fail("engine scenario aborted", format!("unexpected error: {e}"));
    }
    out
}

fn run<A: KernelDispatcher, B: KernelDispatcher>(ctx: &mut Ctx<'_>, a: &A, b: &B, state_dtype: DType, mode: SpecMode) -> Result<()> {
    let dims = ModelDims::new(2, 4, 32, 16, 4)?;
    let seed = crate::mix_seed(&[ctx.opts.seed, 0x00e4_614e]);
    let mut r0 = rng(seed);
    let mut w0 = Bench::speculative(a, dims, 6, state_dtype, DRAFT, mode, DType::F32)?;
    let mut w1 = Bench::speculative(b, dims, 5, state_dtype, DRAFT, mode, DType::F32)?;
    let cache = w0.pool.alloc(1)?[0];
    let prefix = LayerInputs::random(&dims, PREFIX, DType::F32, seed ^ 1);
    let mut world = World {
        dims,
        w: LayerParams::random(&dims, seed ^ 2),
        rng: rng(seed ^ 3),
        cache: Some(cache),
        cache_filled: false,
        state_dtype,
        prefix,
    };
    // the requests
    let lens = [130usize, 1, 64, 63, 65, 200, 17, 90, 5, 140, 33, 77, 128, 9];
    let mut reqs: Vec<Req> = Vec::new();
    for (id, &len) in lens.iter().enumerate() {
        let uses_prefix = id % 3 == 0;
        let tail = LayerInputs::random(&dims, len, DType::F32, seed ^ (100 + id as u64));
        let prompt = if uses_prefix { cat(&world.prefix, &tail) } else { tail };
        reqs.push(Req {
            id,
            prompt,
            uses_prefix,
            arrival: id * 2 + r0.gen_range(0..3),
            worker: id % 2,
            slot: None,
            pos: 0,
            gen_left: r0.gen_range(3..9),
            hist: empty(&dims),
            outs: vec![],
            out_from: 0,
            has_state: false,
            story: vec![],
            done: false,
        });
    }
    let mut migrations = 0;
    for step in 0..400 {
        // admissions (a slot may still be taken: wait)
        for r in reqs.iter_mut() {
            if r.arrival > step || r.slot.is_some() || r.done {
                continue;
            }
            let got = if r.worker == 0 { w0.pool.alloc(1) } else { w1.pool.alloc(1) };
            let Ok(s) = got else { continue };
            r.slot = Some(s[0]);
            if r.uses_prefix && world.cache_filled {
                // prefix-cache hit: restore the snapshot instead of prefilling the prefix
                if r.worker == 0 {
                    w0.pool.copy(cache, s[0])?;
                } else {
                    let st = w0.pool.export(cache)?;
                    w1.pool.import(s[0], &st)?;
                }
                r.pos = PREFIX;
                r.hist = world.prefix.clone();
                r.out_from = PREFIX;
                r.has_state = true;
                r.story.push(format!("w{} prefix hit", r.worker));
            }
            r.arrival = usize::MAX - 1;
        }
        worker_step(ctx, &mut world, &mut w0, 0, &mut reqs)?;
        worker_step(ctx, &mut world, &mut w1, 1, &mut reqs)?;
        // mid-flight migrations, both ways, exported in canonical order
        if step % 6 == 5 {
            let mut moved = Vec::new();
            for from in [0usize, 1] {
                let cand = reqs.iter().position(|r| {
                    r.worker == from && r.slot.is_some() && !r.done && r.pos == r.prompt.tokens && r.gen_left > 0 && !moved.contains(&r.id)
                });
                let Some(i) = cand else { continue };
                let to_slot = if from == 0 { w1.pool.alloc(1) } else { w0.pool.alloc(1) };
                let Ok(to_slot) = to_slot else { continue };
                let s = reqs[i].slot.unwrap();
                let st = if from == 0 { w0.pool.export(s)? } else { w1.pool.export(s)? };
                if from == 0 {
                    w1.pool.import(to_slot[0], &st)?;
                    w0.pool.free(&[s])?;
                } else {
                    w0.pool.import(to_slot[0], &st)?;
                    w1.pool.free(&[s])?;
                }
                let r = &mut reqs[i];
                r.slot = Some(to_slot[0]);
                r.worker = 1 - from;
                r.story.push(format!("migrated w{from}->w{}", 1 - from));
                moved.push(r.id);
                migrations += 1;
            }
        }
        if reqs.iter().all(|r| r.done) {
            break;
        }
    }
    let unfinished = reqs.iter().filter(|r| !r.done).count();
    ctx.exact(&format!("engine: all {} requests finished", reqs.len()), unfinished == 0, format!("{unfinished} unfinished"));
    ctx.exact("engine: at least one migration each way happened", migrations >= 2, format!("{migrations} migrations"));
    let hits = reqs.iter().filter(|r| r.out_from > 0).count();
    ctx.exact("engine: prefix-cache hits happened", hits > 0, format!("{hits} hits"));
    Ok(())
}
