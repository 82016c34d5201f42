"""report.md from the demo's results: the task × method matrix and how it was made."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def score_table(results: dict, scores: dict | None = None) -> str:
    """Markdown table: one row per method, one column per task (primary score).

    `scores` (same shape as `results["scores"]`) replaces the template-prompt scores,
    e.g. with the natural-request block's.
    """
    tasks = results["tasks"]
    metric = results["primary_metric"]
    scores = scores if scores is not None else results["scores"]
    head = "| method | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " |"
    lines = [head, "|" + "---|" * (len(tasks) + 1)]
    for m in results["methods"]:
        cells = []
        for t in tasks:
            s = scores[m["name"]][t]["score"]
            own = m["name"] == f"adapter:{t}"
            cells.append(f"**{s:.3f}**" if own else f"{s:.3f}")
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric_table(results: dict, key: str, cols: list[str], extra: str | None = None) -> str:
    """One row per method × task for the tasks whose cells carry `key`."""
    tasks = [t for t in results["tasks"] if key in results["scores"]["base"][t]]
    if not tasks:
        return ""
    tail = f" {extra} |" if extra else ""
    head = "| method | task | " + " | ".join(cols) + " |" + tail
    lines = [head, "|" + "---|" * (len(cols) + 2 + bool(extra))]
    for m in results["methods"]:
        for t in tasks:
            r = results["scores"][m["name"]][t]
            vals = " | ".join(_fmt(r[c]) if c in r else "–" for c in cols)
            more = f" {_fmt(r.get(extra, '–'))} |" if extra else ""
            lines.append(f"| {m['name']} | {t} | {vals} |{more}")
    return "\n".join(lines)


def label_table(results: dict) -> str:
    """Both ways of scoring label tasks: generation vs label log-likelihood."""
    cols = ["accuracy_gen", "macro_f1_gen", "accuracy_ll", "macro_f1_ll"]
    return _metric_table(results, "accuracy_gen", cols, extra="chance")


def rouge_table(results: dict) -> str:
    """ROUGE-1/2/L F-measures (rouge-score, Porter stemming) of the generation tasks."""
    return _metric_table(results, "rouge_l", ["rouge_1", "rouge_2", "rouge_l"])


def _mean(vals: list) -> float | None:
    present = [v for v in vals if v is not None]
    return sum(present) / len(present) if present else None


def retention_table(results: dict) -> str:
    ret = results.get("retention") or {}
    if not ret:
        return ""
    tasks = results["tasks"]
    lines = ["| method | " + " | ".join(tasks) + " | mean |", "|" + "---|" * (len(tasks) + 2)]
    lines += [_row_with_mean(name, [row.get(t) for t in tasks], ".2f") for name, row in ret.items()]
    return "\n".join(lines)


def learned_table(results: dict) -> str:
    """What each learned or searched merge saw (validation prompts), chose, and took."""
    rows = [m for m in results["methods"] if m.get("learned")]
    if not rows:
        return ""
    t = results.get("timings_s", {})
    lines = ["| merge | calibration prompts (validation) | chose | seconds |", "|---|---|---|---|"]
    for m in rows:
        info = m["learned"]
        calib = info.get("calibration_examples", {})
        if "chosen" in info:
            chose = ", ".join(f"{k} {v}" for k, v in info["chosen"].items())
        else:
            coef = info.get("coefficients")
            chose = f"λ per {info.get('granularity', 'adapter')}: " + _short(coef)
        lines.append(
            f"| {m['name']} | {sum(calib.values())} ({len(calib)} tasks) | {chose} | "
            f"{t.get(m['name'], info.get('seconds'))} |"
        )
    return "\n".join(lines)


def _short(coef) -> str:
    """λ as text: per adapter as is; per layer (or finer) as each adapter's mean over them."""
    import numpy as np

    a = np.asarray(coef, dtype=float)
    if a.ndim > 1:
        return "mean " + ", ".join(f"{x:.2f}" for x in a.reshape(-1, a.shape[-1]).mean(axis=0))
    return ", ".join(f"{x:.2f}" for x in a)


def _row_with_mean(label: str, vals: list, fmt: str) -> str:
    """`| label | v1 | v2 | ... | mean |` with – for missing values (left out of the mean)."""
    mean = _mean(vals)
    return (
        f"| {label} | "
        + " | ".join("–" if v is None else format(v, fmt) for v in vals)
        + f" | {'–' if mean is None else format(mean, fmt)} |"
    )


def routing_table(results: dict) -> str:
    """Routers side by side: routing accuracy per task, and scores relative to the oracle.

    The best static merge (highest mean retention) is listed last, as the thing
    routing has to beat without looking at the prompt.
    """
    tasks, scores = results["tasks"], results["scores"]
    routes = [m["name"] for m in results["methods"] if m["kind"] == "route"]
    if not routes:
        return ""
    oracle = "route:oracle" if "route:oracle" in scores else None

    def vs_oracle(name: str, t: str) -> float | None:
        ref = scores[oracle][t]["score"] if oracle else None
        return scores[name][t]["score"] / ref if ref else None

    head = "| method | " + " | ".join(f"{t}: routed right / score ÷ oracle" for t in tasks)
    lines = [head + " | mean routed right | mean ÷ oracle |", "|" + "---|" * (len(tasks) + 3)]
    ret = results.get("retention") or {}
    merges = [n for n in ret if n.startswith("merge:")]
    best = max(merges, key=lambda n: _mean(list(ret[n].values())) or 0.0) if merges else None
    for name in routes + ([best] if best else []):
        acc = [scores[name][t].get("routing_accuracy") for t in tasks]
        rel = [vs_oracle(name, t) for t in tasks]
        cells = [
            f"{'–' if a is None else f'{a:.1%}'} / {'–' if r is None else f'{r:.3f}'}"
            for a, r in zip(acc, rel, strict=True)
        ]
        ma, mr = _mean(acc), _mean(rel)
        label = f"{name} (best static merge)" if name == best else name
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {'–' if ma is None else f'{ma:.1%}'} | {'–' if mr is None else f'{mr:.3f}'} |"
        )
    return "\n".join(lines)


def routing_accuracy_table(results: dict) -> str:
    """Routing accuracy per router and prompt style, per task and mean."""
    acc = results.get("routing_accuracy") or {}
    if not acc:
        return ""
    from ..route.prompts import STYLE_NAMES

    tasks = results["tasks"]
    lines = [
        "| router | prompts | " + " | ".join(tasks) + " | mean |",
        "|" + "---|" * (len(tasks) + 3),
    ]
    for name, per_style in acc.items():
        for style, summary in per_style.items():
            cells = [summary["per_task"].get(t) for t in tasks]
            lines.append(
                f"| {name} | {STYLE_NAMES[style]} (n={summary['n']}) | "
                + " | ".join("–" if c is None else f"{c:.1%}" for c in cells)
                + f" | {summary['accuracy']:.1%} |"
            )
    return "\n".join(lines)


def natural_summary(results: dict) -> str:
    """What the natural-request block says: adapters vs their template scores, routers vs oracle."""
    nat = (results.get("natural") or {}).get("scores")
    if not nat:
        return ""
    tasks, scores = results["tasks"], results["scores"]
    lines = ["| method | " + " | ".join(tasks) + " | mean |", "|" + "---|" * (len(tasks) + 2)]
    own = [
        nat[f"adapter:{t}"][t]["score"] / scores[f"adapter:{t}"][t]["score"]
        if f"adapter:{t}" in nat and scores[f"adapter:{t}"][t]["score"]
        else None
        for t in tasks
    ]
    rows = [("own adapter: natural ÷ template score", own)]
    if "route:oracle" in nat:
        for m in results["methods"]:
            if m["kind"] != "route" or m["name"] == "route:oracle":
                continue
            rows.append(
                (
                    f"{m['name']}: routed ÷ oracle",
                    [
                        nat[m["name"]][t]["score"] / nat["route:oracle"][t]["score"]
                        if nat["route:oracle"][t]["score"]
                        else None
                        for t in tasks
                    ],
                )
            )
    lines += [_row_with_mean(label, vals, ".3f") for label, vals in rows]
    return "\n".join(lines)


def machine_lines(m: dict | None) -> list[str]:
    """Where the demo ran: scores and times move with the CPU, its BLAS kernels and the load."""
    if not m:
        return []
    v = m.get("versions") or {}
    load = m.get("load_average")
    return [
        f"Machine: {m.get('chip')} ({m.get('cpus')} CPUs, {m.get('memory_gb')} GiB, {m.get('os')}); "
        f"MLX {v.get('mlx')} on {m.get('mlx_device')}; BLAS: {m.get('blas')}"
        + (f"; load average {load[0]:.2f} at the end" if load else "")
        + f"; {m.get('date_utc')}.",
        "",
    ]


def render_report(results: dict, figures: dict[str, str]) -> str:
    base = results.get("base", {})
    t = results.get("timings_s", {})
    parts = [
        "# mixlora demo report",
        "",
        f"Base: `{base.get('name_or_path')}` ({base.get('num_hidden_layers')} layers, hidden "
        f"{base.get('hidden_size')}); data: `{results.get('data')}`; seed {results.get('seed')}; "
        f"{results.get('eval_examples')} test examples per task (disjoint from training).",
        "",
        *machine_lines(results.get("machine")),
        "## Task × method",
        "",
        "Label tasks: accuracy of the free generation (normalised exact match); summaries: "
        "ROUGE-L F1 (`rouge-score`, stemmed). **Bold**: each adapter on its own task. Off-diagonal adapter cells show "
        "cross-task interference; merge and routing rows show what survives combination.",
        "",
        score_table(results),
        "",
    ]
    if "heatmap" in figures:
        parts += [f"![task × method heatmap]({figures['heatmap']})", ""]
    ret = retention_table(results)
    if ret:
        parts += ["## Retention (score ÷ the task's own adapter)", "", ret, ""]
        if "retention" in figures:
            parts += [f"![retention]({figures['retention']})", ""]
    lt = learned_table(results)
    if lt:
        parts += [
            "### Learned merges",
            "",
            "Coefficients learned on validation prompts (never the test split): AdaMerging "
            "minimises prediction entropy (unlabelled), LoraHub searches one weight per adapter "
            "on labelled answers, `-search` picks a fixed method's options by validation loss. "
            "Each is written as an ordinary adapter.",
            "",
            lt,
            "",
        ]
    rt = routing_table(results)
    if rt:
        parts += [
            "## Routing",
            "",
            "Each held-out prompt is routed on its own; *routed right*: the share sent to its "
            "task's adapter (top-1). *÷ oracle*: the task score relative to the oracle router "
            "(every prompt on its own task's adapter). Gate: the learned MLP on the pooled "
            "prompt embedding (seed 003); centroid: nearest mean embedding of each adapter's "
            "training prompts; Arrow: each adapter's top singular directions, no data; uniform "
            "merge: all adapters at equal weight for every prompt.",
            "",
            rt,
            "",
        ]
    at = routing_accuracy_table(results)
    if at:
        parts += [
            "### Routing accuracy by how the request is phrased",
            "",
            "*template*: the test prompts above, in each task's fixed template. *held-out "
            "phrasings*: the same test rows asked in wordings that no training saw. *natural "
            "requests*: the hand-written set in `mlx_mixlora/tasks/natural_requests.jsonl` (a "
            "plain instruction plus the text, the way people type; never used for training). "
            f"Training prompts: `{results.get('train_prompts', 'template')}`.",
            "",
            at,
            "",
        ]
    nat = (results.get("natural") or {}).get("scores")
    if nat:
        parts += [
            "## Natural requests, end to end",
            "",
            "Every method on the natural-request set: each request is routed (for the "
            "routers), then answered and scored like the template prompts above.",
            "",
            score_table(results, nat),
            "",
            natural_summary(results),
            "",
        ]
    lt = label_table(results)
    if lt:
        parts += [
            "## Label tasks scored two ways",
            "",
            "`_gen`: greedy generation, normalised exact match. `_ll`: label scoring — the "
            "log-likelihood of each allowed label (plus end of sequence) after the prompt; the "
            "best one is the prediction, so the answer is always a valid label (output-head "
            "isolation). `chance`: the majority-label share.",
            "",
            lt,
            "",
        ]
    rg = rouge_table(results)
    if rg:
        parts += [
            "## Generation tasks: ROUGE-1, ROUGE-2, ROUGE-L",
            "",
            "F-measures from Google's `rouge-score` with Porter stemming (as papers report "
            "CNN/DailyMail), averaged over the test examples.",
            "",
            rg,
            "",
        ]
    parts += [
        "## Timings (seconds)",
        "",
        "| stage | s |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in t.items()],
        "",
        f"Training options: `{results.get('train_options')}`",
        "",
    ]
    return "\n".join(parts)
