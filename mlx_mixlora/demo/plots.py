"""PNG figures for the demo report: interference heatmap and retention bars.

Matplotlib runs headless (Agg) and every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot, save_figure


def plot_heatmap(results: dict, path: str | Path) -> Path:
    """Method × task matrix of primary scores; own-task adapter cells outlined."""
    plt = pyplot()
    tasks = results["tasks"]
    methods = [m["name"] for m in results["methods"]]
    grid = [[results["scores"][m][t]["score"] for t in tasks] for m in methods]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(tasks), 0.9 + 0.45 * len(methods)))
    im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(tasks)), labels=tasks, rotation=20, ha="right")
    ax.set_yticks(range(len(methods)), labels=methods)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                color="white" if v < 0.6 else "black",
                fontsize=8,
            )
            if methods[i] == f"adapter:{tasks[j]}":
                ax.add_patch(
                    plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2)
                )
    ax.set_title("task × method (accuracy; ROUGE-L for summaries)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def plot_retention(results: dict, path: str | Path) -> Path:
    """Grouped bars: each merge/router's score as a share of the task's own adapter."""
    plt = pyplot()
    ret = results["retention"]
    tasks = results["tasks"]
    names = list(ret)
    width = 0.8 / max(len(tasks), 1)
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(names), 3.6))
    for k, t in enumerate(tasks):
        xs = [i + (k - (len(tasks) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [ret[n].get(t, 0.0) for n in names], width, label=t)
    ax.axhline(1.0, color="gray", lw=1, ls="--")
    ax.set_xticks(range(len(names)), labels=names, rotation=20, ha="right")
    ax.set_ylabel("retention (score / own adapter)")
    ax.set_ylim(0, max([1.1, *(v for r in ret.values() for v in r.values())]))
    ax.legend(fontsize=8, ncols=min(len(tasks), 4), loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.set_title("retention of each task under merging / routing")
    return save_figure(fig, path)
