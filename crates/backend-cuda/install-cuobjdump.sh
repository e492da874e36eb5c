#!/usr/bin/env bash
# Installs cuobjdump (CUDA 13) and the nvdisasm it runs from PyPI into <repo>/.nvrtc/cuobjdump, beside
# NVRTC (install-nvrtc.sh; a separate pip target, as pip does not merge into
# an existing one), so the compile gate disassembles the cubins NVRTC makes
# and checks the tensor-core extend's machine code for HMMA instructions on
# machines without a CUDA toolkit. Idempotent; exits non-zero when the install fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
CUOBJDUMP_VERSION=13.4.92
NVDISASM_VERSION=13.5.37
bin=.nvrtc/cuobjdump/nvidia/cu13/bin/cuobjdump
if [ -x "$bin" ] && [ -x "$(dirname "$bin")/nvdisasm" ]; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target .nvrtc/cuobjdump \
  "nvidia-cuda-cuobjdump==${CUOBJDUMP_VERSION}" "nvidia-cuda-nvdisasm==${NVDISASM_VERSION}"
chmod +x "$bin" "$(dirname "$bin")/nvdisasm"
"$bin" --version >/dev/null
