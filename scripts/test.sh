#!/usr/bin/env bash
# Set up (see setup.sh), lint, and run the default test suite (tests marked slow are excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
