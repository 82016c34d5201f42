"""Loss curves of one or several training runs from their `metrics.jsonl`."""

from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot, save_figure
from .metrics import read_metrics


def plot_runs(runs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """Train (solid) and validation (dashed, dots) loss against step, one colour per run.

    Every file is read and checked before anything is drawn or written.
    """
    records = [read_metrics(r) for r in runs]
    names = labels or [Path(r).name or str(r) for r in runs]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, recs) in enumerate(zip(names, records, strict=True)):
        color = f"C{i % 10}"
        train = [(r["step"], r["train_loss"]) for r in recs if "train_loss" in r]
        val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, label=f"{name} train")
        if val:
            ax.plot(*zip(*val, strict=True), "o--", color=color, label=f"{name} val", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("training loss" if len(runs) == 1 else f"training loss of {len(runs)} runs")
    return save_figure(fig, out)
