"""How well a task's recipe adapter carries over from template prompts to other wordings, per seed.

For each task and seed: trains the task's built-in nano recipe (`train.recipe.builtin_recipe`,
prompts and options as `mixlora demo` trains them, seed overridden) on the nano base, then
scores the adapter on the seed's test split three ways: template prompts, held-out phrasings
(wordings no training code uses) and the natural-request set (`tasks/natural_requests.jsonl`).
Reports each score, natural ÷ template (issue #16 asks ≥ 0.9) and, per task, mean / min / max
over seeds. A fingerprint of the task's train phrasings is recorded with each run, so results
from different phrasing variants are never mixed up.

    python benchmarks/recipe_robustness.py --tasks sentiment --seeds 0,1,2
    # --keep DIR: each (task, seed) result saved there and reused (resumable)
    # --model DIR: another nano-built base, e.g. one built from changed train phrasings
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from mlx_mixlora.bench.env import machine_record
from mlx_mixlora.bench.report import kept_or_run, write_result
from mlx_mixlora.demo.pipeline import resolve_base
from mlx_mixlora.model import base_identity, load
from mlx_mixlora.scoring import adapter_method, score_task
from mlx_mixlora.tasks import load_examples, resolve_task
from mlx_mixlora.tasks.natural import natural_examples
from mlx_mixlora.train import train_adapter
from mlx_mixlora.train.recipe import NANO, builtin_recipe

SETS = ("template", "heldout", "natural")
TARGET = 0.9  # issue #16: natural requests score ≥ 90% of template prompts


def phrasings_fingerprint(task) -> str:
    """Short hash of the task's train phrasings: which phrasing variant a run trained on."""
    return hashlib.sha256("\n\x00".join(task.phrasings).encode()).hexdigest()[:12]


def eval_sets(task, seed: int, n_eval: int) -> dict[str, list[dict]]:
    """The seed's test split as template and held-out prompts, and the natural set."""
    return {
        "template": load_examples(task, "synthetic", "test", n=n_eval, seed=seed),
        "heldout": load_examples(task, "synthetic", "test", n=n_eval, seed=seed, prompts="heldout"),
        "natural": natural_examples(task),
    }


def ratio(natural: float, template: float) -> float | None:
    """natural ÷ template; None when the template score is 0 (no ratio to speak of)."""
    return round(natural / template, 4) if template > 0 else None


def run_one(model, tok, identity: dict, task, seed: int, n_eval: int, where: Path, **over) -> dict:
    """Train `task`'s nano recipe at `seed` into `where` and score it on the three sets."""
    recipe = builtin_recipe(task.name, NANO)
    n_train = over.pop("examples", None) or recipe.examples
    examples = load_examples(
        task, "synthetic", "train", n=n_train, seed=seed, prompts=recipe.prompts
    )
    cfg = recipe.train_config(seed=seed, name=task.name, **over)
    t0 = time.perf_counter()
    res = train_adapter((model, tok), examples, where, cfg, progress=False, base=identity)
    train_s = time.perf_counter() - t0
    scores = {}
    with adapter_method(task.name, where, base=identity).use(model, task):
        for name, ex in eval_sets(task, seed, n_eval).items():
            scores[name] = score_task(model, tok, task, ex)
    return {
        "task": task.name,
        "seed": seed,
        "phrasings": phrasings_fingerprint(task),
        "train_prompts": recipe.prompts,
        "examples": len(examples),
        "batch_size": cfg.batch_size,
        "steps": res.steps,
        "train_loss": None if res.train_loss is None else round(float(res.train_loss), 4),
        "train_seconds": round(train_s, 1),
        **{name: round(float(s["score"]), 4) for name, s in scores.items()},
        "n": {name: s["n"] for name, s in scores.items()},
        "natural_over_template": ratio(scores["natural"]["score"], scores["template"]["score"]),
        "samples": {name: s["samples"] for name, s in scores.items()},  # the first 3 of each
    }


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per task: mean / min / max over seeds of each score and of natural ÷ template."""
    out: dict[str, dict] = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        rows = [r for r in runs if r["task"] == task]
        s: dict = {"seeds": [r["seed"] for r in rows]}
        for key in (*SETS, "natural_over_template"):
            vals = [r[key] for r in rows if r[key] is not None]
            if vals:
                s[key] = {
                    "mean": round(statistics.mean(vals), 4),
                    "min": round(min(vals), 4),
                    "max": round(max(vals), 4),
                }
        ratios = [r["natural_over_template"] for r in rows]
        s["seeds_meeting_target"] = sum(x is not None and x >= TARGET for x in ratios)
        out[task] = s
    return out


def markdown(report: dict) -> str:
    lines = [
        "| task | seed | template | held-out | natural | natural ÷ template |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        x = r["natural_over_template"]
        lines.append(
            f"| {r['task']} | {r['seed']} | {r['template']:.2f} | {r['heldout']:.2f} | "
            f"{r['natural']:.3f} | {'—' if x is None else f'{x:.3f}'} |"
        )
    for task, s in report["summary"].items():
        cells = " | ".join(
            f"{s[k]['mean']:.3f} ({s[k]['min']:.3f}-{s[k]['max']:.3f})" if k in s else "—"
            for k in (*SETS, "natural_over_template")
        )
        lines.append(f"| {task} | mean (min-max) | {cells} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="sentiment", help="comma-separated built-in task names")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated seeds")
    ap.add_argument("--model", help="a nano-built base dir (default: the cached nano base)")
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--iters", type=int, help="override the recipe's steps")
    ap.add_argument("--examples", type=int, help="override the recipe's training examples")
    ap.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    ap.add_argument("--out", default="benchmarks/results/recipe_robustness.json")
    ap.add_argument("--keep", help="dir for each (task, seed) result, reused when present")
    ap.add_argument("--table", action="store_true", help="print the runs as a markdown table")
    args = ap.parse_args()
    tasks = [resolve_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    base = resolve_base(args.model, print, progress=False)
    model, tok = load(base)
    identity = base_identity(base)
    over = {"iters": args.iters} if args.iters else {}
    over |= {"examples": args.examples} if args.examples else {}
    over |= {"batch_size": args.batch_size} if args.batch_size else {}
    t0 = time.perf_counter()
    runs, reused = [], []
    for task in tasks:
        for seed in args.seeds:
            tag = [identity["fingerprint"], task.name, phrasings_fingerprint(task), f"seed{seed}"]
            tag += [f"iters{args.iters}"] if args.iters else []
            tag += [f"examples{args.examples}"] if args.examples else []
            tag += [f"batch{args.batch_size}"] if args.batch_size else []
            kept = Path(args.keep) / ("-".join(tag) + ".json") if args.keep else None

            def train_and_score(task=task, seed=seed) -> dict:
                with tempfile.TemporaryDirectory() as tmp:
                    where = Path(tmp) / task.name
                    return run_one(model, tok, identity, task, seed, args.eval_examples, where, **over)  # fmt: skip

            runs.append(kept_or_run(kept, train_and_score, reused))
            print(json.dumps({k: runs[-1][k] for k in ("task", "seed", *SETS)}), flush=True)
    report = {
        "machine": machine_record(gemm=False),
        "base": {"path": str(base), **identity},
        "iters_override": args.iters,
        "examples_override": args.examples,
        "batch_size_override": args.batch_size,
        "seconds": round(time.perf_counter() - t0, 1),
        "reused_from_keep": reused,  # runs read back from --keep, not trained and scored here
        "target_natural_over_template": TARGET,
        "summary": summarise(runs),
        "runs": runs,
    }
    write_result(report, Path(args.out), markdown(report) if args.table else None)


if __name__ == "__main__":
    main()
