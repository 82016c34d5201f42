"""Bench outputs: `bench.json` (everything), `bench.md` (tables), `bench.png` (ratios).

Ratios are ours ÷ peer on the medians, oriented so that > 1 means our MLX code
is faster (tokens/s: ours / peer; seconds: peer / ours); `speedup_best` compares
the best runs, which a busy shared machine disturbs less. All three files are
written into one directory atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..io import atomic_dir, write_json

JSON, MD, PNG = "bench.json", "bench.md", "bench.png"
ORDER = ["mlx", "mlx-lm", "torch", "peft"]
LABELS = {"mlx": "ours (MLX)", "mlx-lm": "mlx-lm", "torch": "torch", "peft": "torch+PEFT"}


def measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "median" in r]


def ratios(rows: list[dict]) -> list[dict]:
    """Speed of ours relative to every peer row with the same (workload, case), from medians."""
    ours = {(r["workload"], r["case"]): r for r in measured(rows) if r["backend"] == "mlx"}
    out = []
    for r in measured(rows):
        o = ours.get((r["workload"], r["case"]))
        if r["backend"] == "mlx" or o is None or not r["median"] or not o["median"]:
            continue
        hi = r["higher_is_better"]
        out.append(
            {
                "workload": r["workload"],
                "case": r["case"],
                "metric": r["metric"],
                "peer": r["backend"],
                "ours_median": o["median"],
                "peer_median": r["median"],
                "speedup": o["median"] / r["median"] if hi else r["median"] / o["median"],
                # best run vs best run: less sensitive to load spikes on a shared machine
                "speedup_best": o["max"] / r["max"] if hi else r["min"] / o["min"],
            }
        )
    return out


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    if "median" not in r:
        return "skipped" if "skipped" in r else "error"
    return f"{_fmt(r['median'])} ({_fmt(r['min'])}–{_fmt(r['max'])})"


def table(result: dict) -> str:
    """The main markdown table: one line per (workload, case), one column per backend."""
    rows = result["rows"]
    backends = [b for b in ORDER if b in result["backends"]]
    keys: list[tuple[str, str]] = []
    for r in measured(rows):
        if (r["workload"], r["case"]) not in keys:
            keys.append((r["workload"], r["case"]))
    by = {(r["workload"], r["case"], r["backend"]): r for r in measured(rows)}
    rat: dict[tuple[str, str], list[str]] = {}
    for x in result["ratios"]:
        rat.setdefault((x["workload"], x["case"]), []).append(
            f"{x['speedup']:.2f}× ({x['speedup_best']:.2f}×) vs {LABELS[x['peer']]}"
        )
    head = [
        "workload",
        "case",
        "unit",
        *(LABELS[b] for b in backends),
        "ours ÷ peer: medians (best runs); > 1: ours faster",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl, case in keys:
        unit = next(r["unit"] for r in measured(rows) if (r["workload"], r["case"]) == (wl, case))
        cells = [_cell(by.get((wl, case, b))) for b in backends]
        lines.append(
            "| "
            + " | ".join([wl, case, unit, *cells, ", ".join(rat.get((wl, case), [])) or "—"])
            + " |"
        )
    return "\n".join(lines)


def memory_table(result: dict) -> str:
    lines = ["| workload | case | backend | peak memory (GB) | what |", "|---|---|---|---|---|"]
    for r in measured(result["rows"]):
        if r.get("peak_memory_gb") is not None:
            lines.append(
                f"| {r['workload']} | {r['case']} | {LABELS[r['backend']]} | "
                f"{_fmt(r['peak_memory_gb'])} | {r['memory_kind']} |"
            )
    return "\n".join(lines)


def markdown(result: dict) -> str:
    m = result["machine"]
    v = m["versions"]
    vers = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    notes = [f"- {r['backend']} {r['workload']}: {r.get('skipped') or r.get('error')}"
             for r in result["rows"] if "median" not in r]  # fmt: skip
    notes += [f"- {n}" for n in result["notes"]]
    parts = [
        f"# mixlora bench: {', '.join(result['workloads'])}",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Model: {result['model']['source']}; dtype {result['model']['dtype']}.",
        "",
        f"Machine: {m['chip']}, {m['cpus']} CPUs, {m['memory_gb']} GB, {m['os']} ({m['machine']}); "
        f"MLX device {m['mlx_device']}; MLX BLAS {m['blas']}; {m['date_utc']}.",
        f"Load average before / after: {m['load_average']} / {result['load_average_after']}.",
        "",
        f"Versions: {vers}.",
        "",
        f"Median (min–max) of {result['sizes']['repeats']} runs after {result['sizes']['warmup']} "
        "warm-up run(s); train: per-step tokens/s over all steps but the first; PEFT merges: "
        f"{result['sizes'].get('peft_merge_repeats', '?')} runs, no warm-up (eager torch, ~30 s each).",
        "",
        table(result),
        "",
        "Peak memory:",
        "",
        memory_table(result),
    ]
    ref = result.get("m1_reference")
    if ref:
        this, full = ref["this_model"], ref["tinyllama_1.1b"]
        parts += [
            "",
            f"M1 reference limits ({this['assumptions']}): this model ({this['params'] / 1e6:.0f} M "
            f"params) decode ≤ {this['decode_fp16_tokens_per_s']:.0f} tokens/s, LoRA training ≤ "
            f"{this['lora_train_fp32_tokens_per_s']:.0f} tokens/s; full TinyLlama 1.1B: decode ≤ "
            f"{full['decode_fp16_tokens_per_s']:.0f}, training ≤ {full['lora_train_fp32_tokens_per_s']:.0f}.",
        ]
    if notes:
        parts += ["", "Notes:", "", *notes]
    return "\n".join(parts) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Horizontal bars: ours ÷ peer per (workload, case, peer), a line at 1."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    rat = result["ratios"]
    labels = [f"{x['workload']}/{x['case']} vs {LABELS[x['peer']]}" for x in rat]
    vals = [x["speedup"] for x in rat]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * max(len(rat), 1)))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in vals]
    # bars grow from 1 on a log axis: 2× faster and 2× slower look the same size
    ax.barh(range(len(vals)), [v - 1 for v in vals], left=1, color=colors)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}×" if v >= 1 else f"{v:.2f}× ", va="center", fontsize=8,
                ha="left" if v >= 1 else "right")  # fmt: skip
    ax.axvline(1.0, color="gray", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(range(len(vals)), labels=labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ours (MLX) ÷ peer, from medians; > 1: ours is faster (log scale)")
    lo, hi = min([0.5, *vals]), max([2.0, *vals])
    ax.set_xlim(lo / 1.8, hi * 1.8)
    ax.set_title(
        f"mixlora bench — {result['machine']['chip']}, {result['machine']['mlx_device']}\n"
        f"{result['model']['source']}",
        fontsize=9,
    )
    return save_figure(fig, path)


def publish(result: dict, out: str | Path | None) -> None:
    """A benchmark script's result: printed, and written to `out` (atomically) when given."""
    print(json.dumps(result, indent=2))
    if out:
        write_json(out, result)


def kept_or_run(path: Path | None, compute: Callable[[], dict], reused: list[str]) -> dict:
    """`compute()`, or the result an earlier run kept at `path` (resumable long benchmarks).

    A result read back is listed in `reused`, so the report says what it did not redo;
    a computed one is written to `path` when given.
    """
    if path is not None and path.is_file():
        reused.append(str(path))
        return json.loads(path.read_text())
    value = compute()
    if path is not None:
        write_json(path, value)
    return value


def write_result(result: dict, out: str | Path, table: str | None = None) -> None:
    """A long benchmark's result: written to `out` (atomically), its path printed, then `table`."""
    write_json(out, result)
    print(f"wrote {out}")
    if table is not None:
        print(table)


def write_report(out: str | Path, result: dict, overwrite: bool = False) -> Path:
    """bench.json + bench.md + bench.png in `out`, all or nothing."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / JSON, result)
        (tmp / MD).write_text(markdown(result))
        plot(result, tmp / PNG)
    return Path(out)
