"""How far can one learned merge of the demo's adapters go? A λ oracle and a calibration curve.

BENCHMARK ONLY: the `oracle` rows cheat on purpose. They fit the demo's best learned
static merge (AdaMerging, unlabelled `distill` objective, one λ per adapter × module)
on the very test prompts they are then scored on, with the default number of Adam
steps and more (`--steps-factors`). No merge of that form fitted on other data should
beat it, so its mean retention estimates the upper bound of that family on these
adapters: when even the oracle stays under the issue's 0.85, 0.85 is out of reach for
any λ-per-module merge of them. Nothing here is reachable from the CLI or the demo.

The `calib` rows are honest: the same merge fitted on 16, 32, 64 ... validation
prompts per task (`--sizes`, as the demo's `task_calibration`), scored on the test
split, with the seconds each fit takes: does more calibration data close the gap,
and at what cost (the issue caps a learned merge of four adapters at 60 s here)?

Retention = merge's score ÷ the task's own adapter's score on the same test examples
(as the demo), per task and its mean over tasks.

    python benchmarks/merge_oracle.py docs/demo --keep runs/merge_oracle --table
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mlx_mixlora.adapter_format import read_adapter
from mlx_mixlora.bench.env import machine_record
from mlx_mixlora.bench.report import kept_or_run, write_result
from mlx_mixlora.merge.adamerging import DEFAULT_LR, DEFAULT_STEPS
from mlx_mixlora.merge.calibration import CalibExample, calibration_rows, task_calibration
from mlx_mixlora.merge.learned import learn_merge
from mlx_mixlora.model import base_identity, load
from mlx_mixlora.nano import ensure_nano_base
from mlx_mixlora.scoring import adapter_method, evaluate_matrix
from mlx_mixlora.tasks import load_examples, resolve_task

# The demo's `merge:adamerging-distill` (demo.pipeline.MERGES).
MERGE = {"method": "adamerging", "objective": "distill", "granularity": "module"}
TARGET = 0.85  # the mean retention


def plan(sizes: Sequence[int], steps_factors: Sequence[int]) -> list[dict]:
    """The rows: the test-set oracle at each step factor, then honest fits at each size."""
    rows = [
        {"name": f"oracle-test-x{f}", "fit_on": "test", "cheats": True, "steps": f * DEFAULT_STEPS}
        for f in steps_factors
    ]
    rows += [
        {"name": f"calib-{n}", "fit_on": "validation", "cheats": False, "n_per_task": n,
         "steps": DEFAULT_STEPS}
        for n in sizes
    ]  # fmt: skip
    return rows


def row_retention(scores: dict[str, float], own: dict[str, float]) -> dict[str, float]:
    """score / own adapter's score per task (tasks whose own score is 0 are left out, as the demo)."""
    return {t: scores[t] / own[t] for t in own if own[t] > 0}


def overlap(calib: Sequence[CalibExample], evals: dict[str, list[dict]]) -> int:
    """How many calibration prompts are also test prompts of their task."""
    test = {(t, ex["prompt"]) for t, exs in evals.items() for ex in exs}
    return sum((c.task, c.prompt) in test for c in calib)


def row_calibration(row: dict, tasks, evals: dict[str, list[dict]], seed: int):
    """What a row is fitted on: the test examples themselves (oracle) or the validation split."""
    if row["fit_on"] == "test":
        return calibration_rows(tasks, evals)  # the test split itself: the oracle
    return task_calibration(tasks, "synthetic", row["n_per_task"], seed=seed)


def run_row(row, model, tok, tasks, adapters, identity, evals, own, seed) -> dict:
    calib = row_calibration(row, tasks, evals, seed)
    loaded = [read_adapter(p) for p in adapters.values()]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = learn_merge(
            model, tok, loaded, MERGE["method"], calib, objective=MERGE["objective"],
            granularity=MERGE["granularity"], steps=row["steps"], seed=seed,
        )  # fmt: skip
        learn_s = time.perf_counter() - t0
        res.save(Path(tmp) / row["name"])
        m = adapter_method(f"merge:{row['name']}", Path(tmp) / row["name"], base=identity)
        t0 = time.perf_counter()
        out = evaluate_matrix(model, tok, tasks, evals, [m], progress=False)
        score_s = time.perf_counter() - t0
    scores = {t.name: out["scores"][m.name][t.name]["score"] for t in tasks}
    ret = row_retention(scores, own)
    learned = res.info["learned"]
    return {
        **row,
        "calib_prompts": len(calib),
        "calib_per_task": learned["calibration_examples"],
        "calib_test_overlap": overlap(calib, evals),
        "lr": DEFAULT_LR,
        "scores": scores,
        "retention": ret,
        "mean_retention": statistics.mean(ret.values()),
        "learn_seconds": round(learn_s, 1),
        "learn_seconds_inner": learned["seconds"],  # learn_coefficients' own clock
        "score_seconds": round(score_s, 1),
        "loss_first": learned["loss_first"],
        "loss_last": learned["loss_last"],
        "coefficients": learned["coefficients"],
    }


def markdown(report: dict) -> str:
    """One line per row: per-task and mean retention, learn seconds, prompts, steps."""
    tasks = report["tasks"]
    lines = [
        "| row | fit on | prompts | steps | " + " | ".join(tasks) + " | mean | learn s |",
        "|---|---|---|---|" + "---|" * (len(tasks) + 2),
    ]
    for r in report["rows"]:
        fit = "**test (oracle)**" if r["cheats"] else r["fit_on"]
        cells = " | ".join(
            f"{r['retention'][t]:.2f}" if t in r["retention"] else "—" for t in tasks
        )
        lines.append(
            f"| {r['name']} | {fit} | {r['calib_prompts']} | {r['steps']} | {cells} "
            f"| {r['mean_retention']:.2f} | {r['learn_seconds']:.0f} |"
        )
    return "\n".join(lines)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="docs/demo", help="a `mixlora demo` output dir")
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--sizes", type=_ints, default=[16, 32, 64], help="validation prompts/task")
    ap.add_argument("--steps-factors", type=_ints, default=[1, 3], help="oracle steps ÷ default")
    ap.add_argument("--out", default="benchmarks/results/merge_oracle.json")
    ap.add_argument("--keep", help="dir for each row's result, reused when present (resumable)")
    ap.add_argument("--table", action="store_true", help="print the rows as a markdown table")
    args = ap.parse_args()
    run = Path(args.run)
    saved = json.loads((run / "results.json").read_text())
    seed = saved["seed"]
    tasks = [resolve_task(t) for t in saved["tasks"]]
    adapters = {t.name: run / "adapters" / t.name for t in tasks}
    base = ensure_nano_base(progress=False)
    model, tok = load(base)
    identity = base_identity(base)
    evals = {t.name: load_examples(t, "synthetic", "test", n=args.eval_examples, seed=seed)
             for t in tasks}  # fmt: skip
    keep = Path(args.keep) if args.keep else None
    tag = f"{run.resolve().name}-seed{seed}-n{args.eval_examples}"
    t0 = time.perf_counter()
    reused: list[str] = []

    def kept(name: str, compute) -> dict:
        return kept_or_run(keep / f"{tag}-{name}.json" if keep else None, compute, reused)

    def own_scores() -> dict:
        own = [adapter_method(f"adapter:{n}", p, base=identity) for n, p in adapters.items()]
        out = evaluate_matrix(model, tok, tasks, evals, own, progress=False)
        return {t.name: out["scores"][f"adapter:{t.name}"][t.name]["score"] for t in tasks}

    own = kept("own", own_scores)
    rows = []
    for row in plan(args.sizes, args.steps_factors):
        rows.append(
            kept(row["name"], lambda r=row: run_row(r, model, tok, tasks, adapters, identity,
                                                    evals, own, seed))
        )  # fmt: skip
        r = rows[-1]
        print(json.dumps({"row": r["name"], "mean_retention": round(r["mean_retention"], 4),
                          "learn_seconds": r["learn_seconds"]}), flush=True)  # fmt: skip
    demo = saved.get("retention", {}).get("merge:adamerging-distill")  # the demo's own number
    demo_ret = None if demo is None else {"per_task": demo, "mean": statistics.mean(demo.values())}
    report = {
        "machine": machine_record(gemm=False),
        "seconds": round(time.perf_counter() - t0, 1),  # this invocation only, see below
        "reused_from_keep": reused,  # rows read back from --keep, not fitted and scored here
        "note": "oracle rows are fitted on the test prompts they are scored on (cheating, "
        "on purpose): an upper bound for one λ per adapter × module, not a result",
        "merge": MERGE,
        "seed": seed,
        "run": str(run),
        "tasks": [t.name for t in tasks],
        "examples_per_task": {t: len(e) for t, e in evals.items()},
        "default_steps": DEFAULT_STEPS,
        "lr": DEFAULT_LR,
        "target_mean_retention": TARGET,
        "own_scores": own,
        "demo_retention": demo_ret,
        "rows": rows,
    }
    write_result(report, Path(args.out), markdown(report) if args.table else None)


if __name__ == "__main__":
    main()
