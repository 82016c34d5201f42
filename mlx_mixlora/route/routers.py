"""Routers: map prompts to weights over adapters, then a mode turns weights into a decision.

Every router gives `probs(model, token_lists, labels=None) -> [N, n_adapters]`:

- `GateRouter` — the learned gate on pooled layer-L features (seed 003);
- `CentroidRouter` — cosine similarity to the mean feature of each adapter's
  training prompts (training-free), softmax at temperature `tau`;
- `ArrowRouter` — Arrow (Ostapenko et al. 2024), see `arrow.py`. Arrow routes each
  token at each LoRA module with softmax over |⟨x, vᵢ⟩|; we implement that rule
  on the inputs x of the modules all adapters share, then average the per-token,
  per-module softmax weights over the prompt's tokens and modules to get one
  prompt-level distribution (a base forward over the whole prompt);
- `OracleRouter` — the true task's adapter (needs labels); `UniformRouter` —
  equal weights over all adapters (the uniform-merge baseline).

`decide(probs, mode)`: ``top1`` (sparse), ``topk`` (k largest, renormalised —
executed as a weighted merge of the k), ``threshold`` (top-1 if its weight is at
least `threshold`, else the base model), ``all`` (every adapter at its weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..modules import linear_at, set_module
from .arrow import arrow_prototypes
from .embed import check_layer, check_pool, prompt_features
from .gate import GateConfig, GateMLP

DECISION_MODES = ("top1", "topk", "threshold", "all")
DEFAULT_POOL = "mean"


@dataclass
class Decision:
    """Adapters to apply (empty: the base model) with their mixing weights, plus all weights."""

    indices: list[int]
    weights: list[float]
    probs: list[float]

    @property
    def top1(self) -> int:
        """The chosen adapter, or -1 for the base model."""
        return self.indices[int(np.argmax(self.weights))] if self.indices else -1


def decide(
    probs: np.ndarray, mode: str = "top1", top_k: int = 2, threshold: float = 0.5
) -> list[Decision]:
    """Turn router weights [N, n] into one `Decision` per prompt."""
    if mode not in DECISION_MODES:
        raise MixloraError(f"unknown routing mode {mode!r}; use {', '.join(DECISION_MODES)}")
    probs = np.asarray(probs, dtype=np.float64)
    out = []
    for p in probs:
        order = [int(i) for i in np.argsort(-p, kind="stable")]
        if mode == "top1":
            idx = order[:1]
        elif mode == "topk":
            if top_k < 1:
                raise MixloraError(f"top_k must be >= 1, got {top_k}")
            idx = order[:top_k]
        elif mode == "threshold":
            idx = order[:1] if p[order[0]] >= threshold else []
        else:
            idx = order
        w = p[idx]
        w = (
            (w / w.sum()).tolist()
            if len(idx) and w.sum() > 0
            else [1.0 / max(len(idx), 1)] * len(idx)
        )
        out.append(Decision(idx, [float(x) for x in w], [float(x) for x in p]))
    return out


class FeatureRouter:
    """A router on pooled layer-`layer` prompt features (supports KV-cache reuse)."""

    layer: int
    n_adapters: int
    pool: str = "mean"

    def probs_from_features(self, feats: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def probs(self, model: Any, token_lists: Sequence[Sequence[int]], labels=None) -> np.ndarray:
        return self.probs_from_features(
            prompt_features(model, token_lists, self.layer, pool=self.pool)
        )


class GateRouter(FeatureRouter):
    name = "gate"

    def __init__(self, gate: GateMLP, config: GateConfig):
        self.gate, self.config = gate, config
        self.layer, self.n_adapters, self.pool = config.layer, config.n_adapters, config.pool

    def probs_from_features(self, feats: np.ndarray) -> np.ndarray:
        return self.gate.probs(feats)


class CentroidRouter(FeatureRouter):
    """Nearest centroid (cosine, on standardised features) of each adapter's training prompts."""

    name = "centroid"

    def __init__(
        self,
        feats: np.ndarray,
        labels: Sequence[int],
        n_adapters: int,
        layer: int,
        tau: float = 0.05,
        pool: str = "mean",
    ):
        feats = np.asarray(feats, dtype=np.float32)
        labels = np.asarray(labels)
        missing = sorted(set(range(n_adapters)) - set(labels.tolist()))
        if missing:
            raise MixloraError(f"no prompts for adapter index {missing[0]} to build its centroid")
        self.mean = feats.mean(axis=0)
        self.std = feats.std(axis=0) + 1e-5
        z = self._norm(feats)
        c = np.stack([z[labels == i].mean(axis=0) for i in range(n_adapters)])
        self.centroids = c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-12)
        self.layer, self.n_adapters, self.tau, self.pool = layer, n_adapters, tau, pool

    def _norm(self, feats: np.ndarray) -> np.ndarray:
        z = (np.asarray(feats, dtype=np.float32) - self.mean) / self.std
        return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)

    def probs_from_features(self, feats: np.ndarray) -> np.ndarray:
        s = self._norm(feats) @ self.centroids.T / self.tau
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


class _ArrowProbe(nn.Module):
    """Wraps a Linear; records the Arrow softmax over adapters for each token it sees."""

    def __init__(self, base: nn.Linear, protos: mx.array, sink: list):
        super().__init__()
        self.base = base
        self._protos = protos
        self._sink = sink

    def __call__(self, x: mx.array) -> mx.array:
        self._sink.append(mx.softmax(mx.abs(x.astype(mx.float32) @ self._protos), axis=-1))
        return self.base(x)


class ArrowRouter:
    name = "arrow"

    def __init__(self, adapters: list[Adapter]):
        shared = set(adapters[0].module_paths())
        for a in adapters[1:]:
            shared &= set(a.module_paths())
        if not shared:
            raise MixloraError(
                "Arrow routing needs modules that every adapter adapts; these share none"
            )
        self.paths = sorted(shared)
        self.protos = arrow_prototypes(adapters, self.paths)
        self.n_adapters = len(adapters)

    def probs(self, model: Any, token_lists: Sequence[Sequence[int]], labels=None) -> np.ndarray:
        out = np.zeros((len(token_lists), self.n_adapters), dtype=np.float64)
        bases = {p: linear_at(model, p) for p in self.paths}
        sink: list = []
        try:
            for p, base in bases.items():
                set_module(model, p, _ArrowProbe(base, self.protos[p], sink))
            for i, toks in enumerate(token_lists):  # one prompt at a time: no padding to mask
                sink.clear()
                model(mx.array([list(toks)]))
                per_module = mx.stack([s[0].mean(axis=0) for s in sink])  # [modules, n]
                out[i] = np.array(per_module.mean(axis=0))
        finally:
            for p, base in bases.items():
                set_module(model, p, base)
        return out


class OracleRouter:
    """The right adapter for each prompt, from its task label (an upper bound for the report)."""

    name = "oracle"

    def __init__(self, n_adapters: int):
        self.n_adapters = n_adapters

    def probs(self, model: Any, token_lists: Sequence[Sequence[int]], labels=None) -> np.ndarray:
        if labels is None or len(labels) != len(token_lists):
            raise MixloraError("the oracle router needs one adapter label per prompt")
        return np.eye(self.n_adapters)[np.asarray(labels, dtype=int)]


class UniformRouter:
    """Equal weights on every adapter; use mode ``all`` to execute it as a uniform merge."""

    name = "uniform"

    def __init__(self, n_adapters: int):
        self.n_adapters = n_adapters

    def probs(self, model: Any, token_lists: Sequence[Sequence[int]], labels=None) -> np.ndarray:
        return np.full((len(token_lists), self.n_adapters), 1.0 / self.n_adapters)


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    out = [list(tokenizer.encode(p)) for p in prompts]
    if any(len(t) == 0 for t in out):
        raise MixloraError("a prompt encodes to no tokens")
    return out


def route_prompts(
    router: Any,
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    mode: str = "top1",
    labels: Sequence[int] | None = None,
    **kw,
) -> list[int]:
    """Chosen adapter index per prompt (-1: base model, threshold mode only)."""
    probs = router.probs(model, encode_prompts(tokenizer, prompts), labels=labels)
    return [d.top1 for d in decide(probs, mode, **kw)]


def feature_layer(model: Any, adapters: list[Adapter], layer: int | None = None) -> int:
    """The embedding layer: `layer` if given, else the lowest adapted layer capped at n/2.

    At or below every adapter's lowest layer the routing pass's KV cache is reused.
    """
    n = len(model.model.layers)
    if layer is None:
        layer = min(min(a.config.layers) for a in adapters)
        layer = min(layer, n // 2)
    return check_layer(model, layer)


def feature_pool(pool: str | None = None) -> str:
    """The feature pooling: `pool` if given, else `DEFAULT_POOL`."""
    return check_pool(pool or DEFAULT_POOL)
