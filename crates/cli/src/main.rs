//! The `deltanet` command line: run (the main job), replay, bench, info.

use clap::{Parser, Subcommand};
use deltanet::{Backend, DType};
use deltanet_cli::models;
use deltanet_cli::replay::{self, ReplayFile};
use deltanet_cli::workload::{self, RunConfig};
use deltanet_core::oracle::worst_ratio;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "deltanet", version, about = "Gated DeltaNet layers on CPU, CUDA and Ascend NPU: serve, replay, benchmark")]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a synthetic workload through the pool and the dispatcher as an engine does, checked against the oracle.
    Run {
        /// Model preset (qwen3.5-0.8b, qwen3.5-2b, qwen3.5-35b-a3b, qwen3.5-397b-a17b, qwen3-next-80b-a3b) or custom:L,HK,HV,K,V.
        #[arg(long, default_value = "qwen3.5-0.8b")]
        model: String,
        /// Backend: cpu, cpu-vk, cuda:N, npu:N.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Requests served.
        #[arg(long, default_value_t = 8)]
        requests: usize,
        /// Prompt tokens per request.
        #[arg(long, default_value_t = 200)]
        prompt_len: usize,
        /// Prefill token budget per step.
        #[arg(long, default_value_t = 128)]
        chunk: usize,
        /// Tokens generated per request.
        #[arg(long, default_value_t = 12)]
        decode: usize,
        /// Draft tokens per speculative round (0 turns speculative decoding off).
        #[arg(long, default_value_t = 4)]
        draft: usize,
        /// Speculative mode: scratch (per-step states) or replay (drafts' inputs, commit replays).
        #[arg(long, default_value = "scratch")]
        spec_mode: String,
        /// Requests running at once.
        #[arg(long, default_value_t = 4)]
        max_running: usize,
        /// Recurrent-state dtype: f32 or bf16.
        #[arg(long, default_value = "f32")]
        state_dtype: String,
        /// Requests whose outputs are checked against the oracle.
        #[arg(long, default_value_t = 2)]
        check: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run a replay file through a backend and the oracle; report errors per sequence, head and chunk.
    Replay {
        /// Replay file (safetensors; schema in the README).
        file: PathBuf,
        /// Backend: cpu, cpu-vk, cuda:N, npu:N.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Write o, final_state (and conv_state_out) here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Largest accepted error ratio against the oracle.
        #[arg(long, default_value_t = deltanet_core::tolerance::REFERENCE)]
        tolerance: f64,
        /// Also draw the error ratio per token and per chunk, with the chunk splits marked, as a PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// CPU throughput table with the machine's GEMM and copy ceilings measured in the same run.
    Bench {
        /// Also write the table as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Smaller sizes (a quick look, not the reported figures).
        #[arg(long)]
        quick: bool,
        /// Also draw the results against their ceilings (roofline) and the whole-layer shares as a PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Backends compiled in, which are usable here and why not, layouts, dtypes and limits.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("error: --threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(cli.cmd, cli.threads) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd, threads: Option<usize>) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cmd {
        Cmd::Run {
            model,
            backend,
            requests,
            prompt_len,
            chunk,
            decode,
            draft,
            spec_mode,
            max_running,
            state_dtype,
            check,
            seed,
            quiet,
        } => {
            let state_dtype = DType::parse(&state_dtype).ok_or_else(|| format!("unknown state dtype `{state_dtype}`"))?;
            let spec_mode: deltanet_core::SpecMode = spec_mode.parse()?;
            let cfg = RunConfig {
                model: models::find(&model)?,
                requests,
                prompt_len,
                chunk,
                decode,
                draft,
                spec_mode,
                max_running,
                state_dtype,
                seed,
                check_requests: check,
                progress: !quiet,
            };
            let b = Backend::from_name(&backend)?;
            let rep = workload::run(&b, &cfg)?;
            workload::print_report(&cfg, &rep);
            if rep.passed() {
                println!("all checks passed");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("CHECK FAILED: an error ratio exceeds the tolerance");
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Replay { file, backend, out, tolerance, plot } => {
            if !(tolerance.is_finite() && tolerance >= 0.0) {
                return Err(format!("--tolerance {tolerance}: must be a finite number >= 0").into());
            }
            let bytes = std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
            let f = ReplayFile::parse(&bytes)?;
            let b = Backend::from_name(&backend)?;
            let outs = replay::run(&b, &f)?;
            let rep = replay::report(&f, &outs);
            print_replay(&f, &rep, b.name());
            if let Some(path) = out {
                replay::write_outputs(&path, &f, &outs)?;
                println!("wrote {}", path.display());
            }
            if let Some(path) = plot {
                deltanet_cli::plot::replay_errors::write(&f, &rep, tolerance, b.name(), &path)?;
                println!("wrote {}", path.display());
            }
            let worst = worst_ratio(worst_ratio(rep.o_ratio, rep.state_ratio), rep.conv_ratio.unwrap_or(0.0));
            if worst <= tolerance {
                Ok(ExitCode::SUCCESS)
            } else if !worst.is_finite() {
                println!("CHECK FAILED: error ratio {worst} (non-finite outputs or states, or output against an all-zero reference)");
                Ok(ExitCode::FAILURE)
            } else {
                println!("CHECK FAILED: error ratio {worst:.2e} exceeds the tolerance {tolerance:.2e}");
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Bench { json, quick, plot } => bench(json, quick, plot, threads),
        Cmd::Info => {
            println!("deltanet {} — backends in this build:", env!("CARGO_PKG_VERSION"));
            for line in deltanet_cli::info::describe() {
                println!("  {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_replay(f: &ReplayFile, r: &replay::ReplayReport, backend: &str) {
    let d = &f.dims;
    println!(
        "replay on {backend}: {} sequences, {} tokens, HK {} HV {} K {} V {}, {:?} mapping, scale {}, l2norm {}, splits {:?}",
        f.cu_seqlens.len() - 1,
        f.tokens(),
        d.num_k_heads,
        d.num_v_heads,
        d.head_k_dim,
        d.head_v_dim,
        d.head_mapping,
        f.params.scale,
        f.params.use_qk_l2norm,
        f.chunk_splits
    );
    println!(
        "error ratio vs oracle: o {:.2e}, final state {:.2e}{}",
        r.o_ratio,
        r.state_ratio,
        r.conv_ratio.map_or(String::new(), |c| format!(", conv state {c:.2e}"))
    );
    if let Some((o, s)) = r.vs_expected {
        println!("error ratio vs the file's expected outputs: o {o:.2e}, final state {s:.2e}");
    }
    for (i, (o, s)) in r.per_seq.iter().enumerate() {
        let chunks: Vec<String> = r.per_chunk[i].iter().map(|c| format!("{c:.1e}")).collect();
        println!("  seq {i}: o {o:.2e}, state {s:.2e}; per 64-token chunk: [{}]", chunks.join(" "));
    }
    let heads: Vec<String> = r.per_head.iter().map(|h| format!("{h:.1e}")).collect();
    println!("  per head: [{}]", heads.join(" "));
    match r.first_jump {
        Some((s, t)) => println!("  error jumps first at sequence {s}, token {t} (chunk {})", t / 64),
        None => println!("  no error jump"),
    }
}

#[cfg(feature = "cpu")]
fn bench(
    json: Option<PathBuf>,
    quick: bool,
    plot: Option<PathBuf>,
    threads: Option<usize>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use deltanet_cli::bench::{run_report, ReportOptions};
    let mut opts = if quick { ReportOptions::quick() } else { ReportOptions::default() };
    opts.threads = threads.unwrap_or(2);
    let d = opts.dims;
    println!(
        "deltanet bench: CPU backend, Qwen3.5-35B-A3B GDN shape (HK {} HV {} K {} V {}), f32 state unless noted, {} threads",
        d.num_k_heads, d.num_v_heads, d.head_k_dim, d.head_v_dim, opts.threads
    );
    let rep = run_report(&opts)?;
    print!("{rep}");
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&bench_json(&rep))?)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = plot {
        deltanet_cli::plot::roofline::write(&rep, &path)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "cpu")]
fn bench_json(rep: &deltanet_cli::bench::Report) -> serde_json::Value {
    let layer = |l: &deltanet_cli::bench::LayerResult| {
        serde_json::json!({
            "step": l.step.to_string(), "tokens": l.step.tokens(), "layers": l.layers, "secs": l.secs,
            "tokens_per_s": l.tokens_per_s(), "conv_secs": l.conv_secs, "gate_secs": l.gate_secs, "delta_secs": l.delta_secs,
            "conv_gate_share": l.conv_gate_share()})
    };
    let pair = |p: &deltanet_cli::bench::LayerPair| {
        serde_json::json!({"a": p.a.0.to_string(), "b": p.b.0.to_string(), "a_secs": p.a_secs, "b_secs": p.b_secs,
            "rate_ratio": p.rate_ratio(), "time_ratio": p.time_ratio()})
    };
    serde_json::json!({
        "threads": rep.threads,
        "gemm_gflops": rep.gemm.gflops,
        "gemm_n": rep.gemm.n,
        "extend": rep.extend.iter().map(|e| serde_json::json!({
            "tokens": e.tokens, "secs": e.secs, "tokens_per_s": e.tokens_per_s, "gflops": e.gflops,
            "gemm_gflops": e.gemm_gflops, "ratio_to_gemm": e.gflops / e.gemm_gflops})).collect::<Vec<_>>(),
        "decode": rep.decode.iter().map(|x| serde_json::json!({
            "batch": x.batch, "state": x.state.name(), "layers": x.layers, "secs_per_step": x.secs_per_step,
            "tokens_per_s": x.tokens_per_s, "gbps": x.gbps, "rmw_gbps": x.rmw_gbps, "ratio_to_rmw": x.gbps / x.rmw_gbps})).collect::<Vec<_>>(),
        "verify": rep.verify.iter().map(|x| serde_json::json!({
            "batch": x.batch, "draft": x.draft, "verify_secs": x.verify_secs, "decode_secs": x.decode_secs, "ratio": x.ratio})).collect::<Vec<_>>(),
        "spec": rep.spec.iter().map(|x| serde_json::json!({
            "batch": x.batch, "draft": x.draft, "scratch_secs": x.scratch_secs, "replay_secs": x.replay_secs,
            "decode_secs": x.decode_secs, "replay_ratio": x.replay_ratio(), "scratch_ratio": x.scratch_ratio(),
            "scratch_bytes_per_request_layer": x.scratch_bytes, "replay_bytes_per_request_layer": x.replay_bytes,
            "memory_ratio": x.memory_ratio()})).collect::<Vec<_>>(),
        "chunked": rep.chunked.map(|c| serde_json::json!({
            "tokens": c.tokens, "chunk": c.chunk, "one_secs": c.one_secs, "chunked_secs": c.chunked_secs, "ratio": c.ratio})),
        "layer": rep.layer.iter().map(layer).collect::<Vec<_>>(),
        "short_vs_long": rep.short_vs_long.as_ref().map(pair),
        "mixed": rep.mixed.as_ref().map(pair),
    })
}

#[cfg(not(feature = "cpu"))]
fn bench(
    _json: Option<PathBuf>,
    _quick: bool,
    _plot: Option<PathBuf>,
    _threads: Option<usize>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err(Box::new(deltanet::Error::NotCompiled { backend: "cpu".into(), feature: "cpu".into() }))
}
