//! The shared library exports the C ABI and nothing else: every defined
//! dynamic symbol is `dn_`-prefixed (no Rust internals an engine could bind
//! to by accident, no clash with another Rust cdylib in the same process).

mod common;

use std::process::Command;

#[test]
fn shared_library_exports_only_dn_symbols() {
    let so = common::shared_lib();
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(&so).output().expect("run nm (binutils)");
    assert!(out.status.success(), "nm failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().last()).collect();
    let foreign: Vec<&&str> = names.iter().filter(|n| !n.starts_with("dn_")).collect();
    assert!(foreign.is_empty(), "non-dn_ exports in {}: {foreign:?}", so.display());
    // The header's functions are all there (a sample that covers each family).
    for f in ["dn_abi_version", "dn_last_error_message", "dn_pool_create", "dn_batch_verify", "dn_extend", "dn_commit", "dn_forward_extend"]
    {
        assert!(names.contains(&f), "{f} not exported");
    }
}
