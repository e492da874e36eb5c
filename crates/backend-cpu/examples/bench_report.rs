//! Prints the benchmark table of the issue (`cargo run --release --example bench_report -p deltanet-backend-cpu [quick]`).

use deltanet_backend_cpu::bench::{run_report, ReportOptions};

fn main() {
    let mut opts = ReportOptions::default();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "quick") {
        opts.extend_tokens = vec![512, 4096];
        opts.decode_batches = vec![1, 32];
        opts.verify_batches = vec![8];
        opts.chunked = Some((8192, 2048));
    }
    if let Some(t) = args.iter().find_map(|a| a.strip_prefix("threads=")) {
        opts.threads = t.parse().expect("threads=N");
    }
    let report = run_report(&opts).expect("bench");
    println!("{report}");
}
