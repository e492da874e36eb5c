//! Prints the speculative-mode rows of `deltanet bench` alone (replay and
//! scratch verify + commit against D decodes at batch 1 and 8, and each
//! mode's memory), on the Qwen3.5-35B-A3B shape:
//! `cargo run --release --example spec_bench -p deltanet-cli [threads=N]`.

use deltanet_cli::bench::{bench_spec, qwen35_35b_dims};

fn main() {
    let threads = std::env::args().find_map(|a| a.strip_prefix("threads=").map(|t| t.parse().expect("threads=N"))).unwrap_or(2);
    println!("{threads} threads, interleaved rounds (scratch, replay, decodes)");
    for batch in [1, 8] {
        let r = bench_spec(qwen35_35b_dims(), batch, 4, threads).expect("bench");
        println!(
            "batch {batch}: replay verify+commit {:.3} ms ({:.2}x of 4 decodes), scratch {:.3} ms ({:.2}x), 4 decodes {:.3} ms; memory per request and layer replay {:.1} KiB vs scratch {:.1} KiB (1/{:.1})",
            r.replay_secs * 1e3,
            r.replay_ratio(),
            r.scratch_secs * 1e3,
            r.scratch_ratio(),
            r.decode_secs * 1e3,
            r.replay_bytes as f64 / 1024.0,
            r.scratch_bytes as f64 / 1024.0,
            1.0 / r.memory_ratio()
        );
    }
}
