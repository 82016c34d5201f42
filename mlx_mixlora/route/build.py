"""Build the prompt-feature routers (gate, centroid) from task-labelled training prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .adapters import Adapter
from .embed import prompt_features
from .evaluate import adapter_tasks, labelled_prompts
from .gate import GateConfig, train_gate
from .routers import CentroidRouter, GateRouter, encode_prompts, feature_layer


def training_features(
    model: Any,
    tokenizer: Any,
    adapters: list[Adapter],
    layer: int,
    tasks: Sequence[str] | None = None,
    n_per_task: int = 200,
    data: str = "synthetic",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and adapter labels of each adapter's task's training prompts."""
    prompts, labels = labelled_prompts(
        adapter_tasks(adapters, tasks), "train", n_per_task, data, seed
    )
    return prompt_features(model, encode_prompts(tokenizer, prompts), layer), np.asarray(labels)


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
) -> GateRouter:
    """Train a gate on the adapters' task prompts; `features` skips the embedding pass."""
    layer = feature_layer(model, adapters, layer)
    feats, labels = features or training_features(
        model, tokenizer, adapters, layer, tasks, n_per_task, data, seed
    )
    gate, stats = train_gate(
        feats, labels, len(adapters), hidden=hidden, steps=steps, lr=lr, seed=seed
    )
    config = GateConfig(
        layer=layer,
        hidden_size=int(feats.shape[1]),
        gate_hidden=hidden,
        adapters=[a.identity() for a in adapters],
        mode=mode,
        top_k=top_k,
        threshold=threshold,
        base_model=dict(base_model or {}),
        train={
            **stats,
            "tasks": adapter_tasks(adapters, tasks),
            "data": data,
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
) -> CentroidRouter:
    layer = feature_layer(model, adapters, layer)
    feats, labels = features or training_features(
        model, tokenizer, adapters, layer, tasks, n_per_task, data, seed
    )
    return CentroidRouter(feats, labels, len(adapters), layer)
