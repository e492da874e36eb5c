#!/usr/bin/env bash
# The device check for a lent GPU machine (issue 17), in two halves:
#
#   scripts/device-check.sh pack [DIR]     here, on the CPU machine with Rust and network:
#       builds the GPU test binary (the conformance suite on the device, the
#       device against the CPU emulation of the same kernels, and the graph
#       capture / replay of a planned decode step) and the bench in
#       release mode, strips them, packs them with NVRTC (xz), the fla-core and
#       einops wheels, this script and scripts/fla_bench.py into DIR (default
#       target/device-check), and fails when DIR exceeds 64 MiB.
#
#   bash DIR/device-check.sh run            on the GPU machine (torch, triton and
#       transformers, no Rust, no network), DIR being the carried folder:
#       runs everything in one call of at most 8 minutes and writes
#       DIR/results/: each step's log and figures.json (device, versions,
#       every figure, and the ratios to the issue's targets).
#
# What `run` does, each step under its own timeout so one hang cannot eat the rest
# (the timeouts add up to 470 s, inside the 8 minutes of one device call):
#   1. versions: nvidia-smi, torch, triton, the driver;
#   2. bin/gpu-tests: the conformance suite on the GPU (every check of DESIGN §5,
#      tensor-core extend for bf16 inputs), then GPU vs emulation on both extend
#      kernels (short cases: the emulation runs one OS thread per CUDA thread);
#   3. graph capture / replay (issue 16): bin/gpu-tests' a_captured_decode_step_replays_as_the_uncaptured_one,
#      a 3-layer decode step through a fixed-capacity step plan captured on the
#      engine's stream as a CUDA graph and replayed, bitwise equal to the eager step;
#   4. bench vs fla, twice interleaved (ours, fla, ours, fla): D2D copy bandwidth
#      (cudarc and torch), decode and verify D = 4 at batch 1 to 256, extend at
#      1 x 8192, 16 x 2048, 1 x 4096 on the portable and the tensor-core kernel,
#      fla's fused_recurrent_gated_delta_rule and chunk_gated_delta_rule;
#   5. results/figures.json and the ratios printed.
# Exits non-zero when a step fails; the figures of the steps that ran are written anyway.
set -uo pipefail

pack() {
  local repo out
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  out="${1:-$repo/target/device-check}"
  cd "$repo" || exit 1
  rm -rf "$out" && mkdir -p "$out/bin" "$out/lib" "$out/wheels" || exit 1
  bash crates/backend-cuda/install-nvrtc.sh || { echo "error: NVRTC install failed" >&2; exit 1; }
  local log
  log="$(mktemp)"
  # the executables cargo reports for one build (a test target or an example)
  exe_of() { python3 -c 'import json, sys
name = sys.argv[1]
for line in open(sys.argv[2]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == name and m.get("executable"):
        print(m["executable"])' "$1" "$log" | tail -1; }
  cargo test --release -p deltanet-backend-cuda --features emulate --test gpu --no-run --message-format=json >"$log" \
    || { echo "error: building the GPU tests failed" >&2; exit 1; }
  cp "$(exe_of gpu)" "$out/bin/gpu-tests" || exit 1
  cargo build --release -p deltanet-backend-cuda --example bench --message-format=json >"$log" \
    || { echo "error: building the bench failed" >&2; exit 1; }
  cp "$(exe_of bench)" "$out/bin/bench" || exit 1
  strip "$out/bin/gpu-tests" "$out/bin/bench"
  local lib=.nvrtc/nvidia/cu13/lib
  xz -T0 -6 -c "$lib/libnvrtc.so.13" >"$out/lib/libnvrtc.so.13.xz" || exit 1
  for f in "$lib"/libnvrtc-builtins.so.*; do xz -T0 -6 -c "$f" >"$out/lib/$(basename "$f").xz" || exit 1; done
  local fla
  fla="$(python3 -c 'import importlib.metadata as m; print(m.version("fla-core"))' 2>/dev/null || echo 0.6.0)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$out/wheels" \
    "fla-core==$fla" einops || { echo "error: downloading the fla-core wheel failed" >&2; exit 1; }
  cp scripts/device-check.sh scripts/fla_bench.py "$out/" || exit 1
  git rev-parse HEAD >"$out/COMMIT" 2>/dev/null
  local bytes
  bytes=$(du -sb "$out" | cut -f1)
  echo "packed $out: $((bytes / 1024 / 1024)) MiB"
  ls -la "$out" "$out/bin" "$out/lib" "$out/wheels"
  if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
    echo "error: $out is over 64 MiB" >&2
    exit 1
  fi
}

run() {
  local dir res tmp status=0
  dir="$(cd "$(dirname "$0")" && pwd)"
  res="$dir/results"
  tmp="$(mktemp -d)"
  rm -rf "$res"
  mkdir -p "$res" "$tmp/nvrtc" "$tmp/py"
  cd "$dir" || exit 1
  step() { printf '\n== %s\n' "$*" | tee -a "$res/summary.log"; }

  step "1. versions"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
    echo "commit $(cat COMMIT 2>/dev/null)"; } 2>&1 | tee "$res/versions.log"
  for f in lib/*.xz; do xz -dc "$f" >"$tmp/nvrtc/$(basename "$f" .xz)"; done
  export DELTANET_NVRTC_DIR="$tmp/nvrtc" LD_LIBRARY_PATH="$tmp/nvrtc:${LD_LIBRARY_PATH:-}"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-index --target "$tmp/py" wheels/*.whl \
    || { echo "error: installing the fla-core wheel failed" | tee -a "$res/summary.log"; status=1; }
  export PYTHONPATH="$tmp/py:${PYTHONPATH:-}"

  step "2. conformance on the GPU (long cases included), then GPU vs emulation (short cases: the emulation is slow)"
  local rc
  timeout 100 bin/gpu-tests --test-threads=1 --nocapture --skip gpu_ --skip a_captured_ >"$res/gpu-tests.log" 2>&1
  rc=$?
  DELTANET_CONFORMANCE_SHORT=1 timeout 100 bin/gpu-tests --test-threads=2 --nocapture gpu_ >>"$res/gpu-tests.log" 2>&1
  rc=$((rc | $?))
  grep -E "^test |test result|skipped|panicked|error [0-9]" "$res/gpu-tests.log" | tee -a "$res/summary.log"
  [ $rc -eq 0 ] || { echo "error: gpu-tests failed" | tee -a "$res/summary.log"; status=1; }

  step "3. graph capture / replay"
  timeout 40 bin/gpu-tests --test-threads=1 --nocapture --exact a_captured_decode_step_replays_as_the_uncaptured_one \
    >"$res/graph-capture.log" 2>&1
  rc=$?
  grep -E "^test |test result|skipped|panicked|captured and replayed|bitwise" "$res/graph-capture.log" | tee -a "$res/summary.log"
  grep -q "running 1 test" "$res/graph-capture.log" || { echo "error: the capture test is not in bin/gpu-tests" | tee -a "$res/summary.log"; rc=1; }
  [ $rc -eq 0 ] || { echo "error: graph capture / replay failed" | tee -a "$res/summary.log"; status=1; }

  step "4. bench vs fla, interleaved: ours, fla, ours, fla"
  for round in 1 2; do
    timeout 40 bin/bench >"$res/bench-$round.log" 2>&1 || { echo "error: bench round $round failed" | tee -a "$res/summary.log"; status=1; }
    grep -v '^FIGURE' "$res/bench-$round.log" | tee -a "$res/summary.log"
    # the first round includes Triton's compilation of fla's kernels
    timeout $((round == 1 ? 90 : 60)) python3 fla_bench.py >"$res/fla-$round.log" 2>&1 || { echo "error: fla bench round $round failed" | tee -a "$res/summary.log"; status=1; }
    grep -v '^FIGURE' "$res/fla-$round.log" | tail -20 | tee -a "$res/summary.log"
  done

  step "5. figures"
  python3 - "$res" <<'PY' | tee -a "$res/summary.log"
import glob, json, os, statistics, sys
res = sys.argv[1]
figs = {}
for path in sorted(glob.glob(os.path.join(res, "bench-*.log")) + glob.glob(os.path.join(res, "fla-*.log"))):
    for line in open(path, errors="replace"):
        p = line.split()
        if len(p) == 3 and p[0] == "FIGURE":
            figs.setdefault(p[1], []).append(float(p[2]))
mean = {k: statistics.mean(v) for k, v in figs.items()}
def ratio(a, b):
    return mean[a] / mean[b] if a in mean and b in mean and mean[b] else None
ratios = {
    "extend_1x8192_tc_over_fla_chunk (target <= 1.0)": ratio("extend_1x8192_tc_ms", "fla_chunk_1x8192_ms"),
    "extend_16x2048_tc_over_fla_chunk (target <= 1.0)": ratio("extend_16x2048_tc_ms", "fla_chunk_16x2048_ms"),
    "extend_1x8192_tc_tflops (target >= 100)": mean.get("extend_1x8192_tc_tflops"),
    "extend_16x2048_tc_tflops (target >= 100)": mean.get("extend_16x2048_tc_tflops"),
    "decode_b64_copy_fraction (target >= 0.85)": mean.get("decode_b64_copy_fraction"),
    "decode_b256_copy_fraction (target >= 0.85)": mean.get("decode_b256_copy_fraction"),
    "verify4_b64_over_decode (target <= 1.5)": mean.get("verify4_b64_over_decode"),
    "decode_b64_over_fla_recurrent": ratio("decode_b64_us", "fla_recurrent_d1_b64_us"),
    "verify4_b64_over_fla_recurrent_d4": ratio("verify4_b64_us", "fla_recurrent_d4_b64_us"),
}
versions = open(os.path.join(res, "versions.log"), errors="replace").read().strip().splitlines()
out = {"versions": versions, "figures_mean": mean, "figures_rounds": figs, "ratios": ratios}
json.dump(out, open(os.path.join(res, "figures.json"), "w"), indent=1)
for k, v in ratios.items():
    print(f"{k}: {'not measured' if v is None else f'{v:.3f}'}")
PY
  rm -rf "$tmp"
  exit $status
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) run ;;
  *) echo "usage: $0 pack [DIR] | run" >&2; exit 2 ;;
esac
