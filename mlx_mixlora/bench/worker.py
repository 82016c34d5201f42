"""One (backend module, workload) in its own process: `python -m mlx_mixlora.bench.worker`.

Separate processes keep torch's and MLX's threads and memory apart and let one
backend fail without taking the run down. A missing torch is not a failure: the
worker answers with "skipped" rows.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback

from .rows import skipped
from .spec import BenchSpec

MODULES = {"mlx": "mlx_backend", "mlx-lm": "mlx_lm_backend", "torch": "torch_backend"}
NEEDS = {"torch": ("torch", "transformers", "peft")}


def work(module: str, workload: str, spec_path: str, enabled: list[str]) -> list[dict]:
    for pkg in NEEDS.get(module, ()):
        try:
            importlib.import_module(pkg)
        except ImportError:
            return [skipped(workload, b, f"{pkg} not installed") for b in enabled]
    mod = importlib.import_module(f"{__package__}.{MODULES[module]}")
    return mod.run(workload, BenchSpec.load(spec_path), set(enabled))


def main(argv: list[str]) -> int:
    module, workload, spec_path, out, enabled = argv
    try:
        rows = work(module, workload, spec_path, enabled.split(","))
    except Exception as e:  # report, don't crash the run: the runner turns it into an error row
        traceback.print_exc()
        with open(out, "w") as f:
            json.dump({"error": f"{type(e).__name__}: {e}"}, f)
        return 1
    with open(out, "w") as f:
        json.dump({"rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
