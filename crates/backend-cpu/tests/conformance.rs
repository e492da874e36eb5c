//! The shared conformance suite (DESIGN §5) on both CPU layouts, and the
//! two layouts against each other.

mod kmajor {
    deltanet_conformance::conformance_tests!(deltanet_backend_cpu::CpuKMajor::new());
}

mod vmajor {
    deltanet_conformance::conformance_tests!(deltanet_backend_cpu::CpuVMajor::new());
}

mod two_threads {
    deltanet_conformance::conformance_tests!(deltanet_backend_cpu::CpuVMajor::with_threads(2).unwrap());
}

#[test]
fn cross_layout_kmajor_vmajor() {
    use deltanet_conformance::{cross_layout, SuiteOptions};
    let cases = cross_layout(&deltanet_backend_cpu::CpuKMajor::new(), &deltanet_backend_cpu::CpuVMajor::new(), &SuiteOptions::from_env());
    assert!(!cases.is_empty());
    let failed: Vec<String> = cases.iter().filter(|c| !c.passed).map(|c| format!("{c}")).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
