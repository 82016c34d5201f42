#!/usr/bin/env bash
# Set up (see setup.sh) and run the main job: the offline demo (nano base + synthetic tasks).
# Writes runs/demo (replaced on each run); extra arguments go to `mixlora demo` (e.g. --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mixlora demo --overwrite "$@"
