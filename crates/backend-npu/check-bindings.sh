#!/usr/bin/env bash
# Checks crates/backend-npu/src/sys/bindings.rs against CANN's own headers.
#
# 1. Downloads (never installs) the torch-npu wheel, which ships CANN's
#    runtime headers (torch_npu/include/third_party/acl/inc/) and op-plugin's
#    op_api_common_base.h (the aclCreateTensor... function types), and checks
#    its sha256.
# 2. Unpacks those headers into a temporary folder (removed on exit; nothing
#    lands in the repository).
# 3. Builds bindings-check/ (its own small workspace: bindgen + syn only) and
#    runs it: bindgen with the crate's configuration (build/regenerate.rs),
#    then a structural compare of every checked-in item (name, types, pointer
#    constness, parameters, values). Any difference fails.
#
# Needs python3 with pip, cargo, network access to PyPI and crates.io, and
# libclang (Debian: libclang-dev; installed here with apt-get when CI=true and
# it is missing). With CI=true a missing prerequisite fails; otherwise it is
# reported and the check is skipped, so a plain local run never needs them.
#
# Environment: DELTANET_TORCH_NPU_WHEEL=path to use an already downloaded
# wheel (offline); KEEP_BINDINGS_OUT=path to keep bindgen's output there.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# The headers the bindings are proven against. Change all three together.
TORCH_NPU_VERSION=2.14.0
WHEEL=torch_npu-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl
WHEEL_SHA256=7736f7d82cf9f16c7dfc4537f7e7c638153da760273a193455e70857f912189e

missing() {
    echo "check-bindings: $*" >&2
    if [ "${CI:-}" = "true" ]; then
        echo "check-bindings: FAILED: prerequisite missing in CI" >&2
        exit 1
    fi
    echo "check-bindings: NOT CHECKED (outside CI a missing prerequisite skips the check; CI=true makes it fail)" >&2
    exit 0
}

find_libclang() {
    local d dirs=()
    [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
    command -v llvm-config >/dev/null 2>&1 && dirs+=("$(llvm-config --libdir)")
    dirs+=(/usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib)
    for d in "${dirs[@]}"; do
        if compgen -G "$d/libclang.so*" >/dev/null || compgen -G "$d/libclang-[0-9]*.so*" >/dev/null; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

command -v python3 >/dev/null 2>&1 || missing "python3 not found"
command -v cargo >/dev/null 2>&1 || missing "cargo not found"

if ! libdir="$(find_libclang)"; then
    if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== check-bindings: installing libclang-dev (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null; } \
            || missing "apt-get install libclang-dev failed"
    fi
    libdir="$(find_libclang)" || missing "libclang not found (apt-get install libclang-dev, or set LIBCLANG_PATH)"
fi
export LIBCLANG_PATH="$libdir"

work="$(mktemp -d "${TMPDIR:-/tmp}/deltanet-cann-headers.XXXXXX")"
trap 'rm -rf "$work"' EXIT

wheel="${DELTANET_TORCH_NPU_WHEEL:-}"
if [ -z "$wheel" ]; then
    echo "== check-bindings: downloading torch_npu $TORCH_NPU_VERSION (download only)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
        "torch_npu==$TORCH_NPU_VERSION" -d "$work/wheel" \
        || missing "pip download torch_npu==$TORCH_NPU_VERSION failed (no network or no pip?)"
    wheel="$work/wheel/$WHEEL"
fi
[ -f "$wheel" ] || missing "wheel $wheel not found"
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet - \
    || { echo "check-bindings: FAILED: $wheel is not the torch_npu $TORCH_NPU_VERSION wheel the bindings are proven against" >&2; exit 1; }

python3 - "$wheel" "$work/hdr" <<'EOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
keep = ("torch_npu/include/third_party/acl/inc/",
        "torch_npu/include/third_party/op-plugin/op_plugin/utils/op_api_common_base.h")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(keep)]
    z.extractall(dest, names)
print(f"== check-bindings: unpacked {len(names)} header entries")
EOF
third="$work/hdr/torch_npu/include/third_party"

echo "== check-bindings: building the checker"
manifest="$here/bindings-check/Cargo.toml"
target="$repo/target/bindings-check"
# Its own workspace, so the workspace-wide `cargo fmt --all` does not reach it.
cargo fmt --manifest-path "$manifest" --all -- --check
cargo test --quiet --locked --manifest-path "$manifest" --target-dir "$target"
cargo build --quiet --locked --manifest-path "$manifest" --target-dir "$target"

echo "== check-bindings: bindgen over the headers, then the compare"
"$target/debug/deltanet-npu-bindings-check" \
    --include "$third/acl/inc" \
    --opapi-common-base "$third/op-plugin/op_plugin/utils/op_api_common_base.h" \
    --checked "$here/src/sys/bindings.rs" \
    ${KEEP_BINDINGS_OUT:+--out "$KEEP_BINDINGS_OUT"}
