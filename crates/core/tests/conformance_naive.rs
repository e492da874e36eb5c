//! The conformance suite run against a plain token-by-token host dispatcher
//! (tests/support), on both layouts; and injected faults that the suite must
//! catch, so that no check passes vacuously.

mod support;

use deltanet_core::conformance::{run_check, Check, SuiteOptions};
use deltanet_core::{KMajor, VMajor};
use support::{Fault, Naive};

mod naive_kmajor {
    deltanet_core::conformance_tests!(super::Naive::<deltanet_core::KMajor>::new());
}

mod naive_vmajor {
    deltanet_core::conformance_tests!(super::Naive::<deltanet_core::VMajor>::new());
}

fn short() -> SuiteOptions {
    SuiteOptions { long: false, ..SuiteOptions::default() }
}

/// Runs `check` on a faulty dispatcher and returns the failed case names.
fn failures(check: Check, fault: Fault) -> Vec<String> {
    let cases = run_check(check, &|| Naive::<VMajor>::with_fault(fault), &short());
    assert!(!cases.is_empty());
    cases.into_iter().filter(|c| !c.passed).map(|c| format!("{c}")).collect()
}

#[test]
fn suite_catches_ignored_initial_state_flag() {
    let f = failures(Check::ExtendOracle, Fault::IgnoreInitFlag);
    assert!(f.iter().any(|c| c.contains("final states")), "{f:?}");
}

#[test]
fn suite_catches_commit_of_the_wrong_step() {
    let f = failures(Check::VerifyCommit, Fault::CommitOffByOne);
    assert!(f.iter().any(|c| c.contains("commit of step")), "{f:?}");
    let f = failures(Check::LayerForward, Fault::CommitOffByOne);
    assert!(f.iter().any(|c| c.contains("conv window")), "{f:?}");
}

#[test]
fn suite_catches_ignored_strides() {
    let f = failures(Check::Strides, Fault::IgnoreStrides);
    assert!(!f.is_empty());
}

/// The naive backend has no validation code at all: core validates every
/// call before its kernels run, so the bad-input cases still pass — a
/// backend cannot forget a check.
#[test]
fn bad_input_is_refused_for_a_backend_that_checks_nothing() {
    assert!(failures(Check::BadInput, Fault::None).is_empty());
}

#[test]
fn suite_catches_batch_dependence() {
    let f = failures(Check::BatchInvariance, Fault::BatchDependent);
    assert!(f.iter().any(|c| c.contains("extend outputs")), "{f:?}");
}

#[test]
fn cross_layout_agrees_and_replay_seed_is_printed() {
    let cases = deltanet_core::conformance::cross_layout(&Naive::<KMajor>::new(), &Naive::<VMajor>::new(), &short());
    assert!(!cases.is_empty());
    for c in &cases {
        println!("{c}");
        assert!(c.passed, "{c}");
    }
    // a failing case names the seed that replays it
    let f = failures(Check::ExtendOracle, Fault::IgnoreInitFlag);
    assert!(f[0].contains("DELTANET_CONFORMANCE_SEED="), "{}", f[0]);
}

/// The `fallible` form runs when the constructor succeeds...
mod naive_fallible {
    deltanet_core::conformance_tests!(fallible Ok::<_, deltanet_core::Error>(super::Naive::<deltanet_core::KMajor>::new()));
}

/// ...and prints `skipped: <reason>` and passes when the backend is unavailable.
mod unavailable_backend {
    deltanet_core::conformance_tests!(fallible Err::<super::Naive<deltanet_core::VMajor>, _>(deltanet_core::Error::Unavailable {
        backend: "imaginary".into(),
        reason: "no such device in this test".into(),
    }));
}

#[test]
fn engine_scenario_kmajor_and_vmajor_workers() {
    let cases = deltanet_core::conformance::engine_scenario(&Naive::<KMajor>::new(), &Naive::<VMajor>::new(), &short());
    for c in &cases {
        println!("{c}");
    }
    assert!(cases.len() > 20, "{} cases", cases.len());
    assert!(cases.iter().all(|c| c.passed), "{:#?}", cases.iter().filter(|c| !c.passed).collect::<Vec<_>>());
}

mod random_batches {
    use super::*;
    use deltanet_core::conformance::check_batch;
    use deltanet_core::ModelDims;
    use proptest::prelude::*;

    /// Random batches: 1-4 sequences of 1-200 tokens, random initial-state flags,
    /// random trees of D = 1-4 drafts and random accepted steps.
    fn batch() -> impl Strategy<Value = (Vec<usize>, Vec<bool>, Vec<i64>, Vec<usize>)> {
        (1usize..5, 1usize..5).prop_flat_map(|(n, d)| {
            let tree = prop::collection::vec((0..d).map(|t| (-1i64..t as i64).boxed()).collect::<Vec<_>>(), n);
            (
                prop::collection::vec(prop_oneof![1usize..8, 60usize..70, 1usize..200], n),
                prop::collection::vec(any::<bool>(), n),
                tree.prop_map(|v| v.into_iter().flatten().collect::<Vec<i64>>()),
                prop::collection::vec(0..d, n),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn random_batch_matches_oracle((lens, init, parents, accepted) in batch(), vmajor in any::<bool>()) {
            let dims = ModelDims::new(1, 2, 16, 32, 4).unwrap();
            let opts = short();
            let cases = if vmajor {
                check_batch(&Naive::<VMajor>::new(), dims, &lens, &init, &parents, &accepted, &opts)
            } else {
                check_batch(&Naive::<KMajor>::new(), dims, &lens, &init, &parents, &accepted, &opts)
            };
            prop_assert!(cases.len() >= 2 + lens.len());
            for c in &cases {
                prop_assert!(c.passed, "{}", c);
            }
        }
    }
}

#[test]
fn printed_replay_filter_reruns_the_failed_case() {
    let f = run_check(Check::ExtendOracle, &|| Naive::<VMajor>::with_fault(Fault::IgnoreInitFlag), &short());
    let failed = f.iter().find(|c| !c.passed).expect("the fault is caught");
    // the filter a failure prints is its full case name
    let only = SuiteOptions { only: Some(failed.case.clone()), ..short() };
    let again = run_check(Check::ExtendOracle, &|| Naive::<VMajor>::with_fault(Fault::IgnoreInitFlag), &only);
    assert!(again.iter().any(|c| c.case == failed.case && !c.passed), "replay did not rerun {}", failed.case);
    assert!(again.len() < f.len(), "the filter narrows the run");
}
