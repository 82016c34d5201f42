#!/usr/bin/env bash
# Set up a working environment on a fresh machine: OpenBLAS (Linux), a venv in
# .venv, the CPU build of torch pinned (an unpinned torch pulls GBs of CUDA),
# then this package with the torch and dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" = "Linux" ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0'; then
  echo "setup: installing OpenBLAS (libopenblas0-pthread) for fast MLX CPU matmuls"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null \
    || echo "setup: could not install OpenBLAS; MLX will use the slow reference BLAS"
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$(uname -s)" = "Linux" ]; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e '.[torch,dev]'
