//! The header's thread-safety rules, exercised by a C program with pthreads
//! (tests/c/threads.c): concurrent slot churn on one pool keeps every count
//! and zeroed slot intact; destroying a pool while another thread runs
//! decode steps on it yields DN_OK or DN_ERR_INVALID_HANDLE, never a crash.

mod common;

use std::path::Path;

#[test]
fn c_threads_follow_the_header_rules() {
    let dir = common::scratch("threads");
    let exe = dir.join("threads");
    common::compile(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/threads.c"), &exe, false, &[]);
    let out = common::run(&exe, &[]);
    assert!(out.contains("threads: ok"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}
