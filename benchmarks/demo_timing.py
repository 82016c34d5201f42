"""Time `mixlora demo` cold (empty cache: builds the nano base) and warm (cached base).

Writes benchmarks/results/demo_timing.json with wall times, stage timings and
whether the two runs produced identical scores (reproducibility). The 2-core
machine is shared: numbers taken while other jobs run are noisy.

    python benchmarks/demo_timing.py [--cache DIR] [--out runs/bench-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mlx_mixlora.bench.env import machine_record
from mlx_mixlora.bench.process import run_json
from mlx_mixlora.io import write_json


def run(out: Path, cache: Path) -> tuple[float, dict]:
    """Wall seconds of a whole `mixlora demo` process, and its results.json."""
    cmd = [sys.executable, "-m", "mlx_mixlora.cli", "demo", "--out", str(out), "--overwrite", "-q"]
    results, wall = run_json(cmd, out / "results.json", {**os.environ, "MIXLORA_CACHE": str(cache)})
    if "error" in results:
        raise SystemExit(f"mixlora demo failed: {results['error']}")
    return wall, results


def scores(results: dict) -> dict:
    return {
        m: {t: {k: v for k, v in c.items() if k != "seconds"} for t, c in row.items()}
        for m, row in results["scores"].items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=None, help="cache dir (default: a fresh temp dir = cold)")
    ap.add_argument("--out", default="runs/bench-demo")
    ap.add_argument("--json", default="benchmarks/results/demo_timing.json")
    args = ap.parse_args()
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="mixlora-cache-"))
    cold_wall, cold = run(Path(args.out) / "cold", cache)
    warm_wall, warm = run(Path(args.out) / "warm", cache)
    report = {
        "machine": machine_record(gemm=False),
        "cold_seconds": round(cold_wall, 1),
        "warm_seconds": round(warm_wall, 1),
        "cold_stages": cold["timings_s"],
        "warm_stages": warm["timings_s"],
        "same_scores": scores(cold) == scores(warm),
        "own_task_scores": {t: cold["scores"][f"adapter:{t}"][t]["score"] for t in cold["tasks"]},
        "base_scores": {t: cold["scores"]["base"][t]["score"] for t in cold["tasks"]},
        "note": "shared 2-core machine: other jobs may have been running",
    }
    write_json(args.json, report)
    print(json.dumps(report, indent=2))
    if not args.cache:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
