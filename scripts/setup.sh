#!/usr/bin/env bash
# Set up a working environment on a fresh machine, no root needed: a venv in .venv,
# the CPU build of torch pinned (an unpinned torch pulls GBs of CUDA), then this
# package with the torch and dev extras. On Linux OpenBLAS comes from PyPI (the
# scipy-openblas32 wheel, a dependency); no apt step (see README: BLAS on Linux).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$(uname -s)" = "Linux" ]; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e '.[torch,dev]'
