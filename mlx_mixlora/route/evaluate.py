"""Routing evaluation: task-labelled prompts, accuracy, confusion matrix and plots.

Prompts come from the task registry: each adapter's `task` (its config field or
an explicit list) names a task whose generator/dataset gives prompts, so the
true label of a prompt is the adapter trained on its task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..io import atomic_file
from .routers import decide, encode_prompts


def adapter_tasks(adapters: list[Adapter], tasks: Sequence[str] | None = None) -> list[str]:
    """The task of each adapter: `tasks` if given, else each config's `task` field."""
    if tasks:
        if len(tasks) != len(adapters):
            raise MixloraError(f"--tasks names {len(tasks)} tasks for {len(adapters)} adapters")
        return list(tasks)
    missing = [a.name for a in adapters if not a.task]
    if missing:
        raise MixloraError(
            f"adapter {missing[0]!r} records no task; pass --tasks (one per adapter, in order)"
        )
    return [a.task for a in adapters]  # type: ignore[misc]


def labelled_prompts(
    tasks: Sequence[str],
    split: str,
    n_per_task: int,
    data: str = "synthetic",
    seed: int = 0,
    prompts: str = "template",
) -> tuple[list[str], list[int]]:
    """`n_per_task` prompts of `split` from each task in style `prompts`, labelled by position."""
    from ..tasks import load_examples

    texts, labels = [], []
    for i, t in enumerate(tasks):
        ex = load_examples(t, data, split, n=n_per_task, seed=seed, prompts=prompts)
        texts += [e["prompt"] for e in ex]
        labels += [i] * len(ex)
    return texts, labels


def natural_prompts(tasks: Sequence[str]) -> tuple[list[str], list[int]]:
    """The natural-request set's prompts of each task (evaluation only), labelled by position."""
    from ..tasks import get_task
    from ..tasks.natural import natural_examples

    texts, labels = [], []
    for i, t in enumerate(tasks):
        ex = natural_examples(get_task(t))
        texts += [e["prompt"] for e in ex]
        labels += [i] * len(ex)
    return texts, labels


STYLE_NAMES = {
    "template": "template",
    "heldout": "held-out phrasings",
    "natural": "natural requests",
}


def routing_prompt_sets(
    task_list: list[str], split: str, n: int, data: str, seed: int = 0
) -> dict[str, tuple[list[str], list[int]]]:
    """Labelled prompts per style: the template, held-out phrasings and natural requests.

    A style is left out when no task has prompts in it (e.g. a user task with no
    held-out phrasings and no natural requests).
    """
    from ..tasks import get_task

    sets = {"template": labelled_prompts(task_list, split, n, data, seed)}
    if all(get_task(t).heldout_phrasings for t in task_list):
        sets["heldout"] = labelled_prompts(task_list, split, n, data, seed, prompts="heldout")
    natural = natural_prompts(task_list)
    if natural[0]:
        sets["natural"] = natural
    return sets


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
    plt = _pyplot()
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
    return _save(fig, path)


def plot_weights(
    result: dict, names: Sequence[str], path: str | Path, max_prompts: int = 80
) -> Path:
    """Stacked bars of the router's weights per prompt: seed 003's adapter contributions."""
    plt = _pyplot()
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
    return _save(fig, path)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MixloraError("plots need matplotlib: pip install 'mlx-mixlora[plots]'") from None
    return plt


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_file(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path
