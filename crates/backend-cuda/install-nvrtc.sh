#!/usr/bin/env bash
# Installs NVRTC (CUDA 13, matching cudarc's `cuda-13040` feature) from PyPI
# into <repo>/.nvrtc so the CUDA kernels' compile gate runs on machines without
# a CUDA toolkit (the gate loads it from there). Idempotent. For a GPU run, either
#   export DELTANET_NVRTC_DIR="$PWD/.nvrtc/nvidia/cu13/lib"
# or put that directory on LD_LIBRARY_PATH (cudarc dlopens libnvrtc.so.13 by
# name). Exits non-zero when the install fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
NVRTC_VERSION=13.5.37
if ls .nvrtc/nvidia/cu13/lib/libnvrtc.so.13* >/dev/null 2>&1; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target .nvrtc "nvidia-cuda-nvrtc==${NVRTC_VERSION}"
ls .nvrtc/nvidia/cu13/lib/libnvrtc.so.13 >/dev/null
