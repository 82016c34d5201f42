#!/usr/bin/env bash
# Set up (see setup.sh) and run the default test suite (tests marked slow are excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
