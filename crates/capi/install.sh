#!/usr/bin/env bash
# Builds and installs the C library under PREFIX (default /usr/local):
#   PREFIX/lib/libdeltanet.so, PREFIX/lib/libdeltanet.a,
#   PREFIX/include/deltanet.h, PREFIX/lib/pkgconfig/deltanet.pc
# Extra arguments go to cargo (e.g. --features cuda).
set -euo pipefail
prefix=${1:-/usr/local}
shift || true
cd "$(dirname "$0")/../.."
cargo build --release -p deltanet-capi "$@"
install -Dm755 target/release/libdeltanet.so "$prefix/lib/libdeltanet.so"
install -Dm644 target/release/libdeltanet.a "$prefix/lib/libdeltanet.a"
install -Dm644 include/deltanet.h "$prefix/include/deltanet.h"
mkdir -p "$prefix/lib/pkgconfig"
sed "s|@PREFIX@|$prefix|" crates/capi/deltanet.pc.in > "$prefix/lib/pkgconfig/deltanet.pc"
echo "installed deltanet into $prefix"
