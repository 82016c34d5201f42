"""Routing accuracy of a router on labelled prompts: accuracy, confusion matrix and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MixloraError
from ..plotting import pyplot, save_figure
from .decision import decide
from .embed import encode_prompts


def accuracy_summary(res: dict, task_list: list[str]) -> dict:
    """Overall and per-task routing accuracy from an `evaluate_routing` result."""
    conf = res["confusion"]
    per = {
        t: (conf[i][i] / sum(conf[i]) if sum(conf[i]) else None) for i, t in enumerate(task_list)
    }
    return {"accuracy": res["accuracy"], "n": res["n"], "per_task": per}


def confusion(labels: Sequence[int], chosen: Sequence[int], n: int) -> np.ndarray:
    """[n, n+1] counts: row = true adapter, column = chosen adapter (last column: base)."""
    m = np.zeros((n, n + 1), dtype=np.int64)
    for t, c in zip(labels, chosen, strict=True):
        m[t, c if c >= 0 else n] += 1
    return m


def evaluate_routing(
    router: Any,
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[int],
    mode: str = "top1",
    top_k: int = 2,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Routing accuracy, confusion matrix and per-prompt weights of one router."""
    if len(prompts) != len(labels) or not prompts:
        raise MixloraError("routing evaluation needs one label per prompt and at least one prompt")
    probs = router.probs(model, encode_prompts(tokenizer, prompts), labels=labels)
    chosen = [d.top1 for d in decide(probs, mode, top_k=top_k, threshold=threshold)]
    n = probs.shape[1]
    return {
        "router": getattr(router, "name", type(router).__name__),
        "mode": mode,
        "n": len(labels),
        "accuracy": float(np.mean(np.asarray(chosen) == np.asarray(labels))),
        "confusion": confusion(labels, chosen, n).tolist(),
        "chosen": chosen,
        "probs": np.asarray(probs).round(6).tolist(),
    }


def plot_confusion(result: dict, names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix heat map (rows true, columns chosen; last column the base)."""
    plt = pyplot()
    m = np.asarray(result["confusion"])
    fig, ax = plt.subplots(figsize=(1.2 * m.shape[1] + 2, 1.0 * m.shape[0] + 1.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(m.shape[1]), [*names, "base"], rotation=30, ha="right")
    ax.set_yticks(range(m.shape[0]), names)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                str(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    ax.set_xlabel("routed to")
    ax.set_ylabel("true task")
    ax.set_title(f"{result['router']} routing, accuracy {result['accuracy']:.1%}")
    return save_figure(fig, path)


def plot_weights(
    result: dict, names: Sequence[str], path: str | Path, max_prompts: int = 80
) -> Path:
    """Stacked bars of the router's weights per prompt: seed 003's adapter contributions."""
    plt = pyplot()
    p = np.asarray(result["probs"])
    p = p[
        np.unique(np.linspace(0, len(p) - 1, min(max_prompts, len(p))).astype(int))
    ]  # spread over tasks
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(p) + 2), 3.5))
    bottom = np.zeros(len(p))
    for j, name in enumerate(names):
        ax.bar(range(len(p)), p[:, j], bottom=bottom, label=name, width=1.0)
        bottom += p[:, j]
    ax.set_xlabel("prompt")
    ax.set_ylabel("router weight")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(f"{result['router']} weights per prompt")
    return save_figure(fig, path)
