#!/usr/bin/env bash
# Installs NVRTC (CUDA 13) from PyPI into .nvrtc/ so the CUDA kernels' compile
# gate runs on machines without a CUDA toolkit. Idempotent; quiet when present.
set -euo pipefail
cd "$(dirname "$0")/.."
NVRTC_VERSION=13.5.37
if ls .nvrtc/nvidia/cu13/lib/libnvrtc.so.13* >/dev/null 2>&1; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target .nvrtc "nvidia-cuda-nvrtc==${NVRTC_VERSION}" \
  || echo "warning: could not install NVRTC; the CUDA compile gate will say skipped" >&2
