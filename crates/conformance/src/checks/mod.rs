//! The checks. Each builds its cases from the suite seed, runs them through
//! the harness and records one [`CaseReport`] per comparison.

mod bad_input;
mod dtypes;
mod extend;
mod invariance;
mod layer;
mod layouts;
mod property;
mod strides;
mod verify;

pub(crate) use bad_input::bad_input;
pub(crate) use dtypes::dtypes;
pub(crate) use extend::{extend_decode, extend_oracle, split_extend};
pub(crate) use invariance::{batch_invariance, determinism};
pub(crate) use layer::layer_forward;
pub(crate) use layouts::{cross, layout_round_trip};
pub(crate) use property::one_case;
pub(crate) use strides::strides;
pub(crate) use verify::verify_commit;

use crate::gen::{bit_diff, mix_seed, DeltaInputs};
use crate::{CaseReport, Check, SuiteOptions};
use deltanet_core::oracle::error_ratio;
use deltanet_core::{tolerance, DType, HeadMapping, ModelDims, Result};

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

    /// Whether `dims` lie outside what the backend declares it runs
    /// ([`deltanet_core::DimLimits`]: head and conv dims, head mapping); such
    /// a shape is recorded as skipped, with the backend's reason, and not run.
    pub(crate) fn outside_limits(&mut self, caps: &deltanet_core::Capabilities, case: &str, dims: &ModelDims) -> bool {
        match caps.limits.check(&caps.backend, dims) {
            Ok(()) => false,
            Err(e) => {
                self.exact(&format!("{case}: skipped (outside the backend's declared limits)"), true, e.to_string());
                true
            }
        }
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
        } else if max_len > tolerance::LONG_SEQUENCE {
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

/// Ancestors of step `t` (root first), `t` included. Written independently
/// of core's `plan::path_to` (recursively), so the suite's expectations do
/// not share a bug with the planning of the code under test.
pub(crate) fn path(parents: &[i64], t: usize) -> Vec<usize> {
    match usize::try_from(parents[t]) {
        Ok(parent) => {
            let mut p = path(parents, parent);
            p.push(t);
            p
        }
        Err(_) => vec![t],
    }
}

/// The inputs of `parts`, one after the other in token order.
pub(crate) fn concat(parts: &[DeltaInputs]) -> DeltaInputs {
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
