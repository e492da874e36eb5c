//! The conformance suite: DESIGN §5 as code. Any backend — ours or a third
//! party's — runs it against itself with one call ([`run_all`]) or one macro
//! ([`conformance_tests!`](crate::conformance_tests), one `#[test]` per check).
//!
//! Every input is generated on the host from a seed, moved into the backend's
//! memory with [`DeviceMemory::write`](deltanet_core::DeviceMemory::write) (through
//! [`DeviceTensor`](deltanet_core::DeviceTensor)), and every output is read back with
//! [`DeviceMemory::read`](deltanet_core::DeviceMemory::read); pool states are compared
//! in canonical order through [`MambaStatePool::export`](deltanet_core::MambaStatePool::export).
//! References come from the f64 [`oracle`](deltanet_core::oracle); errors are
//! [`oracle::error_ratio`](deltanet_core::oracle::error_ratio) (`rms(x - ref) / rms(ref)`).
//!
//! # Checks
//! | [`Check`] | DESIGN §5 | what |
//! |---|---|---|
//! | `ExtendOracle` | 1 | extend (with/without initial state, snapshots) vs the oracle: outputs, final states, snapshot states |
//! | `SplitExtend` | 2 | extend split at 1, 63, 64, 65 and random positions vs one extend; bitwise at multiples of 64 |
//! | `ExtendDecode` | 3 | extend then decode vs one extend of the whole |
//! | `VerifyCommit` | 4 | verify of D drafts (chains and trees), main state untouched, commit of every accepted step vs decoding |
//! | `BatchInvariance` | 5 | a sequence's results do not depend on the rest of the batch (bitwise) |
//! | `Determinism` | 5 | two runs give the same bits |
//! | `LayoutRoundTrip` | 6 | export from the backend's pool, import into a pool of the other layout and back, exact |
//! | `DTypes` | 7 | every input, state and conv-state dtype the backend claims, at its tolerance |
//! | `Strides` | §4 | strided inputs give the same bits as contiguous ones, or a typed `BadStrides` |
//! | `BadInput` | 8 | every bad-input class gives its typed error and leaves the pool digest unchanged |
//! | `LayerForward` | 1-4 | the layer forward (conv + gate + delta rule): extend, chunked extend, snapshots, decode, verify + commit with conv windows |
//!
//! [`cross_layout`] runs the same inputs through two dispatchers (e.g. the
//! K-major and V-major builds of one backend) and compares canonical states
//! and outputs (DESIGN §5.6, second half). [`engine_scenario`] drives two
//! dispatchers as an engine would (arrivals, budgeted chunked prefill,
//! prefix-cache hits, decode, speculative verify + commit, migration between
//! them, slot reuse). [`check_batch`] runs one caller-chosen batch, for
//! property tests; [`fuzz::batch_metadata`] is the fuzz entry point for batch
//! validation.
//!
//! Shapes covered: HV/HK in {1, 2, 4}; K != V; K, V in {16, 32, 48, 64, 128};
//! lengths 1, 63, 64, 65, 1000 and 4096 mixed in one batch; grouped and tiled
//! head mapping. Kernels run on layer 1 of a two-layer pool, and layer 0 is
//! checked untouched.
//!
//! # Tolerances
//! Stated per case in the report; the defaults of [`SuiteOptions`] are core's
//! one table ([`deltanet_core::tolerance`], with the reason for each): f32
//! 2e-6; 1e-5 for cases with a sequence longer than 256 tokens (where f32
//! rounding of the long recurrence itself, not the kernel, dominates); bf16
//! 5e-3 (bf16 inputs or bf16 state); f16 inputs 2e-3. Two kernel results
//! compared with each other (a split extend vs one extend, one layout vs the
//! other), each held to the tolerance against the oracle, are held to twice
//! it ([`tolerance::CROSS_FACTOR`](deltanet_core::tolerance::CROSS_FACTOR)).
//! Bitwise checks report the number of differing elements with tolerance 0.
//!
//! # Replaying a failure
//! Every case carries the suite seed; a failure message prints it. Set
//! `DELTANET_CONFORMANCE_SEED=<seed>` (and optionally
//! `DELTANET_CONFORMANCE_ONLY=<case name substring>`) to replay, or put them
//! in [`SuiteOptions`].
//!
//! ```ignore
//! use deltanet_conformance::{run_all, SuiteOptions};
//! let report = run_all(|| MyDispatcher::new(), &SuiteOptions::from_env());
//! assert!(report.passed(), "{report}");
//! ```

#![warn(missing_docs)]

mod checks;
pub mod fuzz;
mod gen;
mod harness;
mod scenario;

use deltanet_core::{tolerance, Error, KernelDispatcher};

pub use gen::{mix_seed, DeltaInputs, LayerInputs, LayerParams};
pub use scenario::{engine_scenario, engine_scenario_in, engine_scenario_mode};

/// Options of a suite run.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteOptions {
    /// Seed every case's inputs derive from.
    pub seed: u64,
    /// f32 tolerance (error ratio) for short cases.
    pub f32_tol: f64,
    /// f32 tolerance for cases with a sequence longer than 256 tokens.
    pub f32_long_tol: f64,
    /// Tolerance with bf16 inputs/outputs or bf16 state.
    pub bf16_tol: f64,
    /// Tolerance with f16 inputs/outputs.
    pub f16_tol: f64,
    /// Include the long cases (1000 and 4096 tokens).
    pub long: bool,
    /// Only run cases whose name contains this.
    pub only: Option<String>,
    /// Print every case as it completes.
    pub verbose: bool,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            seed: 0x5eed_de17,
            f32_tol: tolerance::F32,
            f32_long_tol: tolerance::F32_LONG,
            bf16_tol: tolerance::BF16,
            f16_tol: tolerance::F16,
            long: true,
            only: None,
            verbose: false,
        }
    }
}

impl SuiteOptions {
    /// Defaults, overridden by `DELTANET_CONFORMANCE_SEED`, `DELTANET_CONFORMANCE_ONLY`,
    /// `DELTANET_CONFORMANCE_VERBOSE=1` and `DELTANET_CONFORMANCE_SHORT=1` (no long cases).
    pub fn from_env() -> Self {
        let mut o = SuiteOptions::default();
        if let Ok(s) = std::env::var("DELTANET_CONFORMANCE_SEED") {
            let s = s.trim();
            let parsed = s.strip_prefix("0x").map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok());
            if let Some(seed) = parsed {
                o.seed = seed;
            }
        }
        if let Ok(s) = std::env::var("DELTANET_CONFORMANCE_ONLY") {
            o.only = Some(s);
        }
        o.verbose = std::env::var("DELTANET_CONFORMANCE_VERBOSE").is_ok_and(|v| v == "1");
        if std::env::var("DELTANET_CONFORMANCE_SHORT").is_ok_and(|v| v == "1") {
            o.long = false;
        }
        o
    }

    /// Whether a case named `case` runs: no filter, the filter is part of its
    /// name, or the filter is a full reported case name starting with it (what
    /// a failure prints).
    pub(crate) fn wants(&self, case: &str) -> bool {
        self.only.as_deref().is_none_or(|o| case.contains(o) || o.starts_with(case))
    }
}

/// One check of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// Extend vs the oracle (outputs, final states, snapshots).
    ExtendOracle,
    /// Split extends vs one extend.
    SplitExtend,
    /// Extend then decode vs one extend.
    ExtendDecode,
    /// Verify (chains, trees) + commit of each accepted step vs decoding.
    VerifyCommit,
    /// Batch invariance, bitwise.
    BatchInvariance,
    /// Run determinism, bitwise.
    Determinism,
    /// Export/import between layouts, exact.
    LayoutRoundTrip,
    /// Each claimed dtype at its tolerance.
    DTypes,
    /// Strides honoured or rejected, never ignored.
    Strides,
    /// Bad input: typed error, pool unchanged.
    BadInput,
    /// The layer forward (conv + gate + delta rule).
    LayerForward,
}

impl Check {
    /// Every check, in the order [`run_all`] runs them.
    pub const ALL: [Check; 11] = [
        Check::ExtendOracle,
        Check::SplitExtend,
        Check::ExtendDecode,
        Check::VerifyCommit,
        Check::BatchInvariance,
        Check::Determinism,
        Check::LayoutRoundTrip,
        Check::DTypes,
        Check::Strides,
        Check::BadInput,
        Check::LayerForward,
    ];

    /// Snake-case name (also the test name the macro generates).
    pub fn name(self) -> &'static str {
        match self {
            Check::ExtendOracle => "extend_vs_oracle",
            Check::SplitExtend => "split_extend",
            Check::ExtendDecode => "extend_then_decode",
            Check::VerifyCommit => "verify_commit",
            Check::BatchInvariance => "batch_invariance",
            Check::Determinism => "determinism",
            Check::LayoutRoundTrip => "layout_round_trip",
            Check::DTypes => "dtypes",
            Check::Strides => "strides",
            Check::BadInput => "bad_input",
            Check::LayerForward => "layer_forward",
        }
    }
}

/// The outcome of one comparison in one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseReport {
    /// The check it belongs to.
    pub check: Check,
    /// Case name (shapes, lengths, dtypes) and what was compared.
    pub case: String,
    /// The suite seed that replays it.
    pub seed: u64,
    /// Error ratio, or the number of differing elements for bitwise comparisons.
    pub error: f64,
    /// Tolerance the error was held to (0 for bitwise and exact checks).
    pub tolerance: f64,
    /// Whether it passed.
    pub passed: bool,
    /// Extra detail (the error returned, what differed).
    pub detail: String,
}

impl std::fmt::Display for CaseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {} {}: error {:.3e} (tolerance {:.1e}){}{}",
            if self.passed { "pass" } else { "FAIL" },
            self.check.name(),
            self.case,
            self.error,
            self.tolerance,
            if self.detail.is_empty() { "" } else { " - " },
            self.detail
        )?;
        if !self.passed {
            write!(f, " (replay: DELTANET_CONFORMANCE_SEED={} DELTANET_CONFORMANCE_ONLY=\"{}\")", self.seed, self.case)?;
        }
        Ok(())
    }
}

/// Every case of a suite run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SuiteReport {
    /// Backend name from its capabilities.
    pub backend: String,
    /// All cases, in order.
    pub cases: Vec<CaseReport>,
}

impl SuiteReport {
    /// True when every case passed (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.cases.is_empty() && self.cases.iter().all(|c| c.passed)
    }
    /// The failed cases.
    pub fn failures(&self) -> Vec<&CaseReport> {
        self.cases.iter().filter(|c| !c.passed).collect()
    }
    /// The largest error ratio among toleranced (non-bitwise) cases of `check`.
    pub fn worst(&self, check: Check) -> Option<f64> {
        self.cases.iter().filter(|c| c.check == check && c.tolerance > 0.0).map(|c| c.error).reduce(f64::max)
    }
}

impl std::fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed = self.failures().len();
        writeln!(f, "conformance of `{}`: {} cases, {} failed", self.backend, self.cases.len(), failed)?;
        for c in &self.cases {
            writeln!(f, "  {c}")?;
        }
        Ok(())
    }
}

/// Runs one check on dispatchers made by `make` (called once per case that
/// needs a fresh one).
pub fn run_check<D: KernelDispatcher>(check: Check, make: &dyn Fn() -> D, opts: &SuiteOptions) -> Vec<CaseReport> {
    let mut out = Vec::new();
    // A panicking backend is a failed check, reported like any other (with its seed).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut ctx = checks::Ctx { check, opts, out: &mut out };
        let r = match check {
            Check::ExtendOracle => checks::extend_oracle(&mut ctx, make),
            Check::SplitExtend => checks::split_extend(&mut ctx, make),
            Check::ExtendDecode => checks::extend_decode(&mut ctx, make),
            Check::VerifyCommit => checks::verify_commit(&mut ctx, make),
            Check::BatchInvariance => checks::batch_invariance(&mut ctx, make),
            Check::Determinism => checks::determinism(&mut ctx, make),
            Check::LayoutRoundTrip => checks::layout_round_trip(&mut ctx, make),
            Check::DTypes => checks::dtypes(&mut ctx, make),
            Check::Strides => checks::strides(&mut ctx, make),
            Check::BadInput => checks::bad_input(&mut ctx, make),
            Check::LayerForward => checks::layer_forward(&mut ctx, make),
        };
        if let Err(e) = r {
            // An unexpected error aborts the check; it is a failure, never a skip.
            ctx.fail("aborted", format!("unexpected error: {e}"));
        }
    }));
    if let Err(panic) = outcome {
        let msg =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        out.push(CaseReport {
            check,
            case: "panicked".into(),
            seed: opts.seed,
            error: f64::INFINITY,
            tolerance: 0.0,
            passed: false,
            detail: format!("the backend or the check panicked after {} cases: {msg}", out.len()),
        });
    }
    out
}

/// Runs every check on dispatchers made by `make`.
///
/// ```no_run
/// # use deltanet_conformance::*;
/// # fn check<D: deltanet_core::KernelDispatcher>(make: impl Fn() -> D) {
/// let report = run_all(make, &SuiteOptions::from_env());
/// assert!(report.passed(), "{report}");
/// # }
/// ```
pub fn run_all<D: KernelDispatcher>(make: impl Fn() -> D, opts: &SuiteOptions) -> SuiteReport {
    let backend = make().capabilities().backend.clone();
    let mut cases = Vec::new();
    for check in Check::ALL {
        cases.extend(run_check(check, &make, opts));
    }
    SuiteReport { backend, cases }
}

/// Runs one check and panics with the report (failed cases and their replay
/// seeds) unless every case passed. What the macro's tests call.
pub fn assert_check<D: KernelDispatcher>(check: Check, make: &dyn Fn() -> D, opts: &SuiteOptions) {
    let cases = run_check(check, make, opts);
    let backend = make().capabilities().backend.clone();
    let report = SuiteReport { backend, cases };
    for c in &report.cases {
        println!("{c}");
    }
    if opts.only.is_none() {
        assert!(!report.cases.is_empty(), "check {} ran no case", check.name());
    }
    assert!(report.cases.iter().all(|c| c.passed), "{report}");
}

/// For backends that may be absent: `Ok(d)` runs; [`Error::Unavailable`]
/// (no library or device), [`Error::NotCompiled`] or [`Error::Unsupported`]
/// (a device this backend does not support) print `skipped: <reason>` and
/// return `None`; any other error panics.
pub fn available<D>(made: deltanet_core::Result<D>) -> Option<D> {
    match made {
        Ok(d) => Some(d),
        Err(e @ (Error::Unavailable { .. } | Error::NotCompiled { .. } | Error::Unsupported { .. })) => {
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("backend construction failed: {e}"),
    }
}

/// Same inputs through two dispatchers (typically the two layouts of one
/// backend, or two backends): canonical final states and outputs must agree
/// within the f32 tolerance, and each must match the oracle.
pub fn cross_layout<A: KernelDispatcher, B: KernelDispatcher>(a: &A, b: &B, opts: &SuiteOptions) -> Vec<CaseReport> {
    let mut out = Vec::new();
    let mut ctx = checks::Ctx { check: Check::LayoutRoundTrip, opts, out: &mut out };
    if let Err(e) = checks::cross(&mut ctx, a, b) {
        ctx.fail("cross-layout aborted", format!("unexpected error: {e}"));
    }
    out
}

/// One case with a caller-chosen batch, for property tests that draw random
/// batches: an extend of sequences of `lens` (each starting from its slot's
/// random state where `init`) vs the oracle; then, when `parents` is not
/// empty, a verify of `parents.len() / lens.len()` drafts per sequence (tree
/// parents, request-major, as [`VerifyBatch::tree`](deltanet_core::VerifyBatch::tree)
/// takes them) and the commit of `accepted[i]` for each, vs decoding the
/// accepted path from the extended state.
#[allow(clippy::too_many_arguments)]
pub fn check_batch<D: KernelDispatcher>(
    d: &D,
    dims: deltanet_core::ModelDims,
    lens: &[usize],
    init: &[bool],
    parents: &[i64],
    accepted: &[usize],
    opts: &SuiteOptions,
) -> Vec<CaseReport> {
    let mut out = Vec::new();
    let mut ctx = checks::Ctx { check: Check::ExtendOracle, opts, out: &mut out };
    if let Err(e) = checks::one_case(&mut ctx, d, dims, lens, init, parents, accepted) {
        ctx.fail(&format!("lens {lens:?} parents {parents:?} accepted {accepted:?}"), format!("error: {e}"));
    }
    out
}

/// Expands to one `#[test]` per [`Check`] for a dispatcher constructor.
///
/// ```ignore
/// mod cpu_kmajor {
///     deltanet_conformance::conformance_tests!(deltanet_backend_cpu::CpuKMajor::new());
/// }
/// // a backend that may be unavailable (constructor returns Result):
/// mod cuda {
///     deltanet_conformance::conformance_tests!(fallible deltanet_backend_cuda::CudaDispatcher::new(0));
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    (fallible $ctor:expr) => {
        $crate::conformance_tests!(@tests (|| $crate::available($ctor)));
    };
    ($ctor:expr) => {
        $crate::conformance_tests!(@tests (|| Some($ctor)));
    };
    (@tests $make:tt) => {
        $crate::conformance_tests!(@one $make, extend_vs_oracle, ExtendOracle);
        $crate::conformance_tests!(@one $make, split_extend, SplitExtend);
        $crate::conformance_tests!(@one $make, extend_then_decode, ExtendDecode);
        $crate::conformance_tests!(@one $make, verify_commit, VerifyCommit);
        $crate::conformance_tests!(@one $make, batch_invariance, BatchInvariance);
        $crate::conformance_tests!(@one $make, determinism, Determinism);
        $crate::conformance_tests!(@one $make, layout_round_trip, LayoutRoundTrip);
        $crate::conformance_tests!(@one $make, dtypes, DTypes);
        $crate::conformance_tests!(@one $make, strides, Strides);
        $crate::conformance_tests!(@one $make, bad_input, BadInput);
        $crate::conformance_tests!(@one $make, layer_forward, LayerForward);
    };
    (@one $make:tt, $name:ident, $check:ident) => {
        #[test]
        fn $name() {
            let make = $make;
            if make().is_none() {
                return;
            }
            $crate::assert_check(
                $crate::Check::$check,
                &|| make().expect("the dispatcher was available a moment ago"),
                &$crate::SuiteOptions::from_env(),
            );
        }
    };
}
