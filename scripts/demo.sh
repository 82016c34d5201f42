#!/usr/bin/env bash
# Set up (see setup.sh) and run the main job: the offline demo (nano base + synthetic tasks).
# Extra arguments go to `mixlora demo` (e.g. --out runs/demo --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mixlora demo "$@"
