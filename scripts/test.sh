#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: the Rust workspace (with
# NVRTC from PyPI so the CUDA kernels' compile gate runs, and the CUDA kernels
# executed on the CPU through the emulation of the CUDA execution model), then
# the Python package built from python/ and its pytest suite against torch,
# transformers and fla. Installs what it needs from the package registries;
# idempotent. Exits non-zero when any step or test fails; the last lines are
# each runner's closing line and one combined `N passed, N failed` line.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
logs="$(mktemp -d)"
pip=(python3 -m pip --disable-pip-version-check --quiet)

step() { printf '\n== %s\n' "$*"; }
fail() { echo "error: $*" >&2; exit 1; }

step "installing NVRTC and cuobjdump (CUDA compile gate) and the Python test dependencies"
bash crates/backend-cuda/install-nvrtc.sh || fail "NVRTC install failed"
bash crates/backend-cuda/install-cuobjdump.sh || fail "cuobjdump install failed"
"${pip[@]}" install -r python/requirements-test.txt || fail "pip install of python/requirements-test.txt failed"

step "Rust: cargo test --workspace --features cuda,npu,deltanet-backend-cuda/emulate"
# `cargo test` links integration tests against rlibs only: build the C ABI's libdeltanet.so
# (which the C client tests compile against) first, with the same features.
cargo build --workspace --lib --features cuda,npu,deltanet-backend-cuda/emulate || fail "cargo build of the libraries failed"
cargo test --workspace --features cuda,npu,deltanet-backend-cuda/emulate 2>&1 | tee "$logs/cargo.log"
rust_status=${PIPESTATUS[0]}

step "Python: pip install ./python (maturin, release build of the extension)"
# Share compiled crates with the workspace's target/ (a separate profile dir is kept per profile).
CARGO_TARGET_DIR="$repo/target" "${pip[@]}" install --force-reinstall --no-deps ./python \
  || fail "building the Python package failed"

step "Python: pytest python/tests"
# From outside python/, so `import deltanet` is the installed package (the source tree has no _native).
(cd "$logs" && python3 -m pytest "$repo/python/tests" -q -p no:cacheprovider 2>&1) | tee "$logs/pytest.log"
py_status=${PIPESTATUS[0]}
if [ "$py_status" -eq 5 ]; then
  echo "error: pytest collected no tests from python/tests" >&2
fi

step "summary"
read -r cp cf ci < <(grep -E "^test result: " "$logs/cargo.log" | awk '{p+=$4; f+=$6; i+=$8} END {print p+0, f+0, i+0}')
py_line=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error)" "$logs/pytest.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
echo "cargo: $cp passed, $cf failed, $ci ignored"
echo "pytest: ${py_line:-no summary line}"
# the number before each word of pytest's closing line ("3 failed, 140 passed, 2 errors in 9s")
count() { echo "$py_line" | awk -v re="$1" '{for (i = 1; i < NF; i++) if ($(i + 1) ~ re) s += $i} END {print s + 0}'; }
pp=$(count '^passed,?$')
pf=$(count '^(failed|errors?),?$')
echo "$((cp + pp)) passed, $((cf + pf)) failed"
if [ "$rust_status" -ne 0 ] || [ "$py_status" -ne 0 ]; then
  echo "error: cargo test exited $rust_status, pytest exited $py_status" >&2
  exit 1
fi
