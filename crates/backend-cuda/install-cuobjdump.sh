#!/usr/bin/env bash
# Installs cuobjdump (CUDA 13) from PyPI into <repo>/.nvrtc/cuobjdump, beside
# NVRTC (install-nvrtc.sh; a separate pip target, as pip does not merge into
# an existing one), so the compile gate disassembles the cubins NVRTC makes
# and checks the tensor-core extend's machine code for HMMA instructions on
# machines without a CUDA toolkit. Idempotent; exits non-zero when the install fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
CUOBJDUMP_VERSION=13.4.92
bin=.nvrtc/cuobjdump/nvidia/cu13/bin/cuobjdump
if [ -x "$bin" ]; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target .nvrtc/cuobjdump "nvidia-cuda-cuobjdump==${CUOBJDUMP_VERSION}"
chmod +x "$bin"
"$bin" --version >/dev/null
