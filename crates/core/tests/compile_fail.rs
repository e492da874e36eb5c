//! A V-major pool handed to a K-major kernel does not compile.

#[test]
fn layout_mismatch_does_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
