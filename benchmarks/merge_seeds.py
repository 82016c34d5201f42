"""Retention of every demo merge over training seeds: is the ranking of merge methods stable?

For each demo output dir given (a `mixlora demo --seed S` run: its adapters and
results.json), runs the demo's merge line-up (`demo.pipeline.MERGES`: fixed,
learned and searched merges; calibration from the validation split of seed S)
and scores each merge and each adapter on the seed's test split, as the demo
does. Writes retention per method and task per seed, then each method's mean
retention over seeds (mean, min, max) and its rank per seed, and how well the
seeds agree on the ranking: Kendall's τ-b between every two seeds' mean
retentions (1: the same order, 0: unrelated), over all methods and over the
methods above the bottom group (`--tau-above`).

    mixlora demo --seed 1 --no-merge --no-route --out runs/seed1   # and 2; seed 0 is docs/demo
    python benchmarks/merge_seeds.py docs/demo runs/seed1 runs/seed2

`--on fit` scores on the validation rows the learned merges and the searches were
fitted on (the calibration set itself) instead of the test split: how well they fit
their own 16 prompts per task. Not a bound on the test split (a few prompts are easy
to fit); benchmarks/merge_oracle.py fits the test prompts themselves for that.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from mlx_mixlora.bench.env import machine_record
from mlx_mixlora.bench.report import kept_or_run, write_result
from mlx_mixlora.demo.pipeline import CALIB_EXAMPLES, DemoConfig, merge_methods, retention
from mlx_mixlora.merge.calibration import CALIB_SPLIT, task_calibration
from mlx_mixlora.model import base_identity, load
from mlx_mixlora.nano import ensure_nano_base
from mlx_mixlora.scoring import adapter_method, evaluate_matrix
from mlx_mixlora.tasks import load_examples, resolve_task


def one_seed(run: Path, model, tok, identity: dict, n_eval: int, on: str = "test") -> dict:
    saved = json.loads((run / "results.json").read_text())
    seed = saved["seed"]
    tasks = [resolve_task(t) for t in saved["tasks"]]
    adapters = {t.name: run / "adapters" / t.name for t in tasks}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        calib = task_calibration(tasks, "synthetic", CALIB_EXAMPLES, seed=seed)
        cfg = DemoConfig(seed=seed, progress=False)
        merges = merge_methods((model, tok), calib, adapters, Path(tmp), identity, cfg, timings)
        own = [adapter_method(f"adapter:{n}", p, base=identity) for n, p in adapters.items()]
        split, n = (CALIB_SPLIT, CALIB_EXAMPLES) if on == "fit" else ("test", n_eval)
        evals = {t.name: load_examples(t, "synthetic", split, n=n, seed=seed) for t in tasks}
        if on == "fit":  # the very rows the merges were fitted on
            assert [e["prompt"] for e in sum(evals.values(), [])] == [c.prompt for c in calib]
        res = evaluate_matrix(model, tok, tasks, evals, own + merges, progress=False)
    ret = retention(res)
    return {
        "seed": seed,
        "run": str(run),
        "scored_on": on,
        "examples_per_task": {t: len(e) for t, e in evals.items()},
        "retention": ret,
        "mean_retention": {m: statistics.mean(r.values()) for m, r in ret.items()},
        "own_scores": {t.name: res["scores"][f"adapter:{t.name}"][t.name]["score"] for t in tasks},
        "merge_seconds": {k: round(v, 1) for k, v in timings.items()},
    }


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b of two score lists over the same items (ties count as neither order)."""
    if len(x) != len(y):
        raise ValueError("kendall_tau needs two lists of the same length")
    concordant = discordant = tied_x = tied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tied_x += 1
            elif dy == 0:
                tied_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n_x = concordant + discordant + tied_x  # pairs ordered by y
    n_y = concordant + discordant + tied_y  # pairs ordered by x
    if n_x == 0 or n_y == 0:
        return float("nan")
    return (concordant - discordant) / math.sqrt(n_x * n_y)


def rank_agreement(seeds: list[dict], methods: list[str]) -> dict:
    """τ-b between every two seeds' mean retention of `methods`, and their mean."""
    pairs = {}
    for a in range(len(seeds)):
        for b in range(a + 1, len(seeds)):
            xs = [seeds[a]["mean_retention"][m] for m in methods]
            ys = [seeds[b]["mean_retention"][m] for m in methods]
            pairs[f"{seeds[a]['seed']}-{seeds[b]['seed']}"] = round(kendall_tau(xs, ys), 3)
    mean = statistics.mean(pairs.values()) if pairs else float("nan")
    return {"methods": len(methods), "pairs": pairs, "mean": round(mean, 3)}


def markdown(report: dict) -> str:
    """The summary as the README's table: mean retention per seed, mean (min-max), rank per seed."""
    seeds = [s["seed"] for s in report["seeds"]]
    rows = sorted(report["summary"].items(), key=lambda kv: -kv[1]["mean"])
    lines = [
        "| merge | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean (min-max) | rank per seed |",
        "|---|" + "---|" * (len(seeds) + 2),
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v:.2f}" for v in r["per_seed"])
            + f" | {r['mean']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | "
            + ", ".join(map(str, r["rank_per_seed"]))
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="demo output dirs (one per seed)")
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/merge_seeds.json")
    ap.add_argument("--keep", help="dir for each seed's result, reused when present (resumable)")
    ap.add_argument(
        "--on",
        choices=("test", "fit"),
        default="test",
        help="score on the test split, or on the calibration rows the merges were fitted on",
    )
    ap.add_argument(
        "--tau-above",
        type=float,
        default=0.2,
        help="rank agreement also over the methods whose mean retention is above this",
    )
    ap.add_argument("--table", action="store_true", help="print the summary as a markdown table")
    args = ap.parse_args()
    base = ensure_nano_base(progress=False)
    model, tok = load(base)
    identity = base_identity(base)
    t0 = time.perf_counter()
    seeds, reused = [], []
    for run in args.runs:
        name = Path(run).resolve().name + ("" if args.on == "test" else f"-{args.on}")
        kept = Path(args.keep) / (name + ".json") if args.keep else None
        seeds.append(
            kept_or_run(
                kept,
                lambda run=run: one_seed(
                    Path(run), model, tok, identity, args.eval_examples, args.on
                ),
                reused,
            )
        )
        print(json.dumps({"seed": seeds[-1]["seed"], **seeds[-1]["mean_retention"]}), flush=True)
    methods = list(seeds[0]["mean_retention"])
    summary = {}
    for m in methods:
        vals = [s["mean_retention"][m] for s in seeds]
        ranks = [sorted(s["mean_retention"].values(), reverse=True).index(v) + 1
                 for s, v in zip(seeds, vals, strict=True)]  # fmt: skip
        summary[m] = {
            "mean": round(statistics.mean(vals), 4),
            "min": round(min(vals), 4),
            "max": round(max(vals), 4),
            "per_seed": [round(v, 4) for v in vals],
            "rank_per_seed": ranks,
        }
    above = [m for m in methods if summary[m]["mean"] > args.tau_above]
    report = {
        "machine": machine_record(gemm=False),
        "seconds": round(time.perf_counter() - t0, 1),
        "reused_from_keep": reused,  # seeds read back from --keep, not merged and scored here
        "scored_on": args.on,
        "summary": summary,
        "rank_agreement": {
            "all": rank_agreement(seeds, methods),
            f"mean_above_{args.tau_above}": rank_agreement(seeds, above),
        },
        "seeds": seeds,
    }
    print(json.dumps({"rank_agreement": report["rank_agreement"]}))
    write_result(report, Path(args.out), markdown(report) if args.table else None)


if __name__ == "__main__":
    main()
