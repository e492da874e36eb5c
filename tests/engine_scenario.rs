//! An engine's life on both layouts (`deltanet_conformance::engine_scenario`):
//! requests arriving over time, chunked prefill under a per-step token budget,
//! prefix-cache hits restored from extend snapshots, decode, speculative
//! verify + commit with random acceptance (chains and trees), requests
//! finishing and their slots reused, and states migrated between a K-major and
//! a V-major pool mid-flight. Every output and final state is compared with
//! the f64 oracle run over the same accepted tokens.

#![cfg(feature = "cpu")]

use deltanet_backend_cpu::{CpuKMajor, CpuVMajor};
use deltanet_conformance::{engine_scenario, CaseReport, SuiteOptions};

fn check(cases: Vec<CaseReport>) {
    for c in &cases {
        println!("{c}");
    }
    assert!(cases.len() > 20, "only {} cases ran", cases.len());
    let failed: Vec<&CaseReport> = cases.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{} of {} failed: {failed:#?}", failed.len(), cases.len());
}

#[test]
fn kmajor_worker_and_vmajor_worker() {
    check(engine_scenario(&CpuKMajor::new(), &CpuVMajor::new(), &SuiteOptions::from_env()));
}

#[test]
fn vmajor_worker_and_kmajor_worker_other_seed() {
    let opts = SuiteOptions { seed: SuiteOptions::from_env().seed ^ 0x5ca1ab1e, ..SuiteOptions::from_env() };
    check(engine_scenario(&CpuVMajor::new(), &CpuKMajor::new(), &opts));
}

#[test]
fn bf16_state_pools() {
    check(deltanet_conformance::engine_scenario_in(
        &CpuKMajor::new(),
        &CpuVMajor::new(),
        deltanet_core::DType::BF16,
        &SuiteOptions::from_env(),
    ));
}

#[test]
fn replay_mode_pools() {
    for sd in [deltanet_core::DType::F32, deltanet_core::DType::BF16] {
        check(deltanet_conformance::engine_scenario_mode(
            &CpuVMajor::new(),
            &CpuKMajor::new(),
            sd,
            deltanet_core::SpecMode::Replay,
            &SuiteOptions::from_env(),
        ));
    }
}
