//! `deltanet-npu-bindings-check --include DIR [--opapi-common-base FILE] --checked FILE [--out FILE]`
//!
//! Runs bindgen over the CANN runtime headers under `DIR` (and op-plugin's
//! descriptor-function types) with the backend's own configuration, then
//! compares every item of the checked-in bindings with the result. Exit
//! status 0: every item equal or marked as from an unshipped operator header;
//! 1: a difference (each printed); 2: bad arguments or bindgen failed.

mod compare;
// Shared with build.rs, which also uses the operator-header list.
#[allow(dead_code)]
#[path = "../../build/regenerate.rs"]
mod regenerate;

use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    include: PathBuf,
    opapi_common_base: Option<PathBuf>,
    checked: PathBuf,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut include, mut opapi, mut checked, mut out) = (None, None, None, None);
    while let Some(a) = it.next() {
        let mut val = || it.next().map(PathBuf::from).ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--include" => include = Some(val()?),
            "--opapi-common-base" => opapi = Some(val()?),
            "--checked" => checked = Some(val()?),
            "--out" => out = Some(val()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        include: include.ok_or("--include is required")?,
        opapi_common_base: opapi,
        checked: checked.ok_or("--checked is required")?,
        out,
    })
}

fn run() -> Result<bool, String> {
    let args = parse_args()?;
    let headers = regenerate::present(&args.include, &regenerate::RUNTIME_HEADERS);
    if headers.len() != regenerate::RUNTIME_HEADERS.len() {
        return Err(format!("runtime headers {:?} not all found under {}", regenerate::RUNTIME_HEADERS, args.include.display()));
    }
    let inputs = regenerate::Inputs { include: args.include.clone(), headers, opapi_common_base: args.opapi_common_base.clone() };
    let generated = regenerate::generate(&inputs)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &generated).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let checked_src = std::fs::read_to_string(&args.checked).map_err(|e| format!("{}: {e}", args.checked.display()))?;
    let ours = compare::parse(&checked_src, false).map_err(|e| format!("{}: {e}", args.checked.display()))?;
    let theirs = compare::parse(&generated, true).map_err(|e| format!("generated bindings: {e}"))?;
    let report = compare::compare(&ours, &theirs);
    println!("{} items equal to the headers: {}", report.equal.len(), report.equal.join(", "));
    println!(
        "{} items {} (operator headers; provenance recorded beside each): {}",
        report.unchecked.len(),
        compare::UNSHIPPED_MARK,
        report.unchecked.join(", ")
    );
    for m in &report.mismatches {
        println!("MISMATCH {m}");
    }
    Ok(report.mismatches.is_empty())
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => {
            println!("bindings check: OK");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("bindings check: FAILED (the checked-in bindings differ from the headers)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("bindings check: ERROR: {e}");
            ExitCode::from(2)
        }
    }
}
