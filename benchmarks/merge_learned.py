"""Time learned merges of the demo's four adapters as a user waits for them: whole `mixlora merge`.

Each case is the whole command in a fresh process (start-up, loading the base
and adapters, reading the validation split, learning, writing), repeated
`--repeats` times; the learning's own in-process seconds (recorded in the merged
adapter's config) are reported beside it. The issue's budget: <= 60 s on this
2-core CPU for a learned merge of the demo's four adapters.

    python benchmarks/merge_learned.py [--adapters docs/demo/adapters] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from mlx_mixlora.bench.env import machine_record
from mlx_mixlora.bench.process import run_json
from mlx_mixlora.io import write_json
from mlx_mixlora.nano import ensure_nano_base

TASKS = ("classification", "qa", "summarization", "sentiment")
CASES = {  # name -> mixlora merge arguments after the adapters
    "adamerging-layer-entropy": ["-m", "adamerging", "--granularity", "layer"],
    "adamerging-layer-distill": ["-m", "adamerging", "--objective", "distill"],
    # the demo's row merge:adamerging-distill
    "adamerging-module-distill": [
        "-m",
        "adamerging",
        "--objective",
        "distill",
        "--granularity",
        "module",
    ],
    "lorahub": ["-m", "lorahub"],
    "ties-search": ["-m", "ties", "--search"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", default="docs/demo/adapters")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default="benchmarks/results/merge_learned.json")
    args = ap.parse_args()
    base = ensure_nano_base(progress=False)
    adapters = [str(Path(args.adapters) / t) for t in TASKS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            walls, learned = [], []
            for i in range(args.repeats):
                out = Path(tmp) / f"{name}-{i}"
                cmd = [sys.executable, "-m", "mlx_mixlora.cli", "merge", *adapters, *CASES[name],
                       "--model", str(base), "--calib", "validation", "-o", str(out)]  # fmt: skip
                cfg, wall = run_json(cmd, out / "adapter_config.json")
                if "error" in cfg:
                    raise SystemExit(f"{name}: {cfg['error']}")
                walls.append(wall)
                learned.append(cfg["extra"]["merge"]["learned"])
            rows.append(
                {
                    "case": name,
                    "command": " ".join(
                        [
                            "mixlora merge",
                            *TASKS,
                            *CASES[name],
                            "--model NANO",
                            "--calib validation",
                        ]
                    ),  # fmt: skip
                    "whole_command_seconds": {
                        "median": round(statistics.median(walls), 2),
                        "min": round(min(walls), 2),
                        "all": [round(w, 2) for w in walls],
                    },
                    "learning_seconds_in_process": [x["seconds"] for x in learned],
                    "calibration_examples": learned[0]["calibration_examples"],
                    "same_result_every_run": _same_but_time(learned),
                    "within_60_s": statistics.median(walls) <= 60.0,
                }
            )
            print(rows[-1], flush=True)
    write_json(Path(args.out), {"machine": machine_record(gemm=True), "cases": rows})
    print(f"wrote {args.out}")


def _same_but_time(learned: list[dict]) -> bool:
    strip = [{k: v for k, v in x.items() if k != "seconds"} for x in learned]
    return all(x == strip[0] for x in strip[1:])


if __name__ == "__main__":
    main()
