//! Prints the benchmark table of the issue (`cargo run --release --example bench_report -p deltanet-cli [quick]`).

use deltanet_cli::bench::{run_report, ReportOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut opts = if args.iter().any(|a| a == "quick") { ReportOptions::quick() } else { ReportOptions::default() };
    if let Some(t) = args.iter().find_map(|a| a.strip_prefix("threads=")) {
        opts.threads = t.parse().expect("threads=N");
    }
    let report = run_report(&opts).expect("bench");
    println!("{report}");
}
