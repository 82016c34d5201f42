"""Build the prompt-feature routers (gate, centroid) from task-labelled training prompts.

Training prompts come in the `varied` style by default (the template plus each
task's train phrasings), so a router learns the task rather than one wording;
held-out phrasings and the natural-request set are never read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..adapter_format import Adapter
from .embed import prompt_features
from .evaluate import adapter_tasks, labelled_prompts
from .gate import GateConfig, train_gate
from .routers import CentroidRouter, GateRouter, encode_prompts, feature_layer, feature_pool


def training_features(
    model: Any,
    tokenizer: Any,
    adapters: list[Adapter],
    layer: int,
    tasks: Sequence[str] | None = None,
    n_per_task: int = 200,
    data: str = "synthetic",
    seed: int = 0,
    pool: str = "mean",
    prompts: str = "varied",
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and adapter labels of each adapter's task's training prompts."""
    texts, labels = labelled_prompts(
        adapter_tasks(adapters, tasks), "train", n_per_task, data, seed, prompts
    )
    feats = prompt_features(model, encode_prompts(tokenizer, texts), layer, pool=pool)
    return feats, np.asarray(labels)


def build_gate(
    model: Any,
    tokenizer: Any,
    adapters: list[Adapter],
    *,
    layer: int | None = None,
    tasks: Sequence[str] | None = None,
    n_per_task: int = 200,
    data: str = "synthetic",
    hidden: int = 64,
    steps: int = 300,
    lr: float = 3e-3,
    mode: str = "top1",
    top_k: int = 2,
    threshold: float = 0.5,
    base_model: dict | None = None,
    seed: int = 0,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    pool: str | None = None,
    prompts: str = "varied",
) -> GateRouter:
    """Train a gate on the adapters' task prompts; `features` skips the embedding pass."""
    layer, pool = feature_layer(model, adapters, layer), feature_pool(pool)
    feats, labels = features or training_features(
        model, tokenizer, adapters, layer, tasks, n_per_task, data, seed, pool, prompts
    )
    gate, stats = train_gate(
        feats, labels, len(adapters), hidden=hidden, steps=steps, lr=lr, seed=seed
    )
    config = GateConfig(
        layer=layer,
        hidden_size=int(feats.shape[1]),
        gate_hidden=hidden,
        adapters=[a.identity() for a in adapters],
        pool=pool,
        mode=mode,
        top_k=top_k,
        threshold=threshold,
        base_model=dict(base_model or {}),
        train={
            **stats,
            # `prompts="user"`: the caller's own labelled prompts, no registry tasks
            "tasks": None if prompts == "user" else adapter_tasks(adapters, tasks),
            "data": data,
            "prompts": prompts,
            "lr": lr,
            "seed": seed,
        },
    )
    return GateRouter(gate, config)


def build_centroid(
    model: Any,
    tokenizer: Any,
    adapters: list[Adapter],
    *,
    layer: int | None = None,
    tasks: Sequence[str] | None = None,
    n_per_task: int = 200,
    data: str = "synthetic",
    seed: int = 0,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    pool: str | None = None,
    prompts: str = "varied",
) -> CentroidRouter:
    layer, pool = feature_layer(model, adapters, layer), feature_pool(pool)
    feats, labels = features or training_features(
        model, tokenizer, adapters, layer, tasks, n_per_task, data, seed, pool, prompts
    )
    return CentroidRouter(feats, labels, len(adapters), layer, pool=pool)
