"""Task-labelled routing prompts (to fit routers and to measure them) and their features.

Prompts come from the task registry: each adapter's `task` (its config field or
an explicit list) names a task whose generator/dataset gives prompts, so the
true label of a prompt is the adapter trained on its task. Routers fit on the
`varied` style (the template plus each task's train phrasings), so they learn
the task rather than one wording; held-out phrasings and the natural-request set
are only ever evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..tasks import get_task, load_examples
from ..tasks.natural import natural_examples
from .embed import encode_prompts, feature_layer, feature_pool, prompt_features

STYLE_NAMES = {
    "template": "template",
    "heldout": "held-out phrasings",
    "natural": "natural requests",
}


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
    texts, labels = [], []
    for i, t in enumerate(tasks):
        ex = load_examples(t, data, split, n=n_per_task, seed=seed, prompts=prompts)
        texts += [e["prompt"] for e in ex]
        labels += [i] * len(ex)
    return texts, labels


def natural_prompts(tasks: Sequence[str]) -> tuple[list[str], list[int]]:
    """The natural-request set's prompts of each task (evaluation only), labelled by position."""
    texts, labels = [], []
    for i, t in enumerate(tasks):
        ex = natural_examples(get_task(t))
        texts += [e["prompt"] for e in ex]
        labels += [i] * len(ex)
    return texts, labels


def routing_prompt_sets(
    task_list: list[str], split: str, n: int, data: str, seed: int = 0
) -> dict[str, tuple[list[str], list[int]]]:
    """Labelled prompts per style: the template, held-out phrasings and natural requests.

    A style is left out when no task has prompts in it (e.g. a user task with no
    held-out phrasings and no natural requests).
    """
    sets = {"template": labelled_prompts(task_list, split, n, data, seed)}
    if all(get_task(t).heldout_phrasings for t in task_list):
        sets["heldout"] = labelled_prompts(task_list, split, n, data, seed, prompts="heldout")
    natural = natural_prompts(task_list)
    if natural[0]:
        sets["natural"] = natural
    return sets


def fit_features(
    model: Any,
    tokenizer: Any,
    adapters: list[Adapter],
    *,
    layer: int | None = None,
    pool: str | None = None,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    tasks: Sequence[str] | None = None,
    n_per_task: int = 200,
    data: str = "synthetic",
    seed: int = 0,
    prompts: str = "varied",
) -> tuple[int, str, np.ndarray, np.ndarray]:
    """(layer, pool, features, adapter labels) a feature router fits on.

    Layer and pooling default to `embed.feature_layer`/`feature_pool`; the
    features are those of each adapter's task's training prompts, unless
    `features` (computed before, at that layer and pooling) skips the pass.
    """
    layer, pool = feature_layer(model, adapters, layer), feature_pool(pool)
    if features is None:
        texts, labels = labelled_prompts(
            adapter_tasks(adapters, tasks), "train", n_per_task, data, seed, prompts
        )
        feats = prompt_features(model, encode_prompts(tokenizer, texts), layer, pool=pool)
        features = (feats, np.asarray(labels))
    return layer, pool, *features
