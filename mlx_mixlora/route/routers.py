"""Routers map prompts to weights over adapters; `ROUTERS` is the one table of them.

Every router gives `probs(model, token_lists, labels=None) -> [N, n_adapters]`
(`Router`); `decision.decide(probs, mode)` turns weights into what runs.

- ``gate`` — the learned gate on pooled layer-L features (seed 003), see `gate.py`;
- ``centroid`` — cosine similarity to the mean feature of each adapter's
  training prompts (training-free), softmax at temperature `tau`;
- ``arrow`` — Arrow (Ostapenko et al. 2024), see `arrow.py`. Arrow routes each
  token at each LoRA module with softmax over |⟨x, vᵢ⟩|; we implement that rule
  on the inputs x of the modules all adapters share, then average the per-token,
  per-module softmax weights over the prompt's tokens and modules to get one
  prompt-level distribution (a base forward over the whole prompt);
- ``uniform`` — equal weights over all adapters, run in mode ``all`` (the
  uniform-merge baseline); ``oracle`` — the true task's adapter (needs labels).

`make_router(name, setup, **options)` builds one by name; `mixlora route eval`,
`mixlora generate` and the demo read their router lists from `ROUTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..modules import linear_at, set_module
from .arrow import arrow_prototypes
from .decision import decide
from .embed import FeatureRouter, encode_prompts
from .gate import load_gate_router
from .prompts import fit_features
from .session import Setup


class Router(Protocol):
    name: str
    n_adapters: int

    def probs(
        self, model: Any, token_lists: Sequence[Sequence[int]], labels: Sequence[int] | None = None
    ) -> np.ndarray: ...


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


def build_centroid(
    model: Any, tokenizer: Any, adapters: list[Adapter], **fit: Any
) -> CentroidRouter:
    """Centroids of the adapters' task prompts; `fit`: `prompts.fit_features` options."""
    layer, pool, feats, labels = fit_features(model, tokenizer, adapters, **fit)
    return CentroidRouter(feats, labels, len(adapters), layer, pool=pool)


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


def route_prompts(
    router: Router,
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


@dataclass
class RouterOptions:
    """What building a router may use; each kind reads the fields it needs."""

    gate_dir: str | Path | None = None  # gate: the trained gate to load
    layer: int | None = None  # feature routers: embedding layer and pooling [defaults]
    pool: str | None = None
    tasks: Sequence[str] | None = None  # centroid: whose training prompts [each config's task]
    n_per_task: int = 200
    data: str = "synthetic"
    features: tuple[np.ndarray, np.ndarray] | None = None  # centroid: computed training features


@dataclass(frozen=True)
class RouterKind:
    """How one router is built and run."""

    build: Callable[[Setup, RouterOptions], Router]
    title: str  # its row in the demo's report, after "route:"
    mode: str = "top1"  # the decision mode it runs in (uniform: "all", a merge of every adapter)
    needs_labels: bool = False  # routes by the true task (oracle): evaluation only
    fits_prompts: bool = False  # fits on task prompts when built (centroid): not for `generate`

    @property
    def routes(self) -> bool:
        """Chooses an adapter from the prompt alone, so its routing accuracy means something."""
        return not self.needs_labels and self.mode != "all"


def _gate(s: Setup, o: RouterOptions) -> Router:
    if o.gate_dir is None:
        raise MixloraError(
            "the gate router needs --gate GATE_DIR (train one with `mixlora gate train`)"
        )
    return load_gate_router(o.gate_dir, s.adapters, base=s.base)


def _centroid(s: Setup, o: RouterOptions) -> Router:
    fit = dict(layer=o.layer, pool=o.pool, features=o.features, tasks=o.tasks, data=o.data)
    return build_centroid(s.model, s.tokenizer, s.adapters, n_per_task=o.n_per_task, **fit)


ROUTERS: dict[str, RouterKind] = {
    "gate": RouterKind(_gate, "gate-top1"),
    "centroid": RouterKind(_centroid, "centroid-top1", fits_prompts=True),
    "arrow": RouterKind(lambda s, o: ArrowRouter(s.adapters), "arrow-top1"),
    "uniform": RouterKind(lambda s, o: UniformRouter(len(s.adapters)), "uniform-merge", "all"),
    "oracle": RouterKind(lambda s, o: OracleRouter(len(s.adapters)), "oracle", needs_labels=True),
}


def router_kind(name: str) -> RouterKind:
    if name not in ROUTERS:
        raise MixloraError(f"unknown router {name!r}; use {', '.join(ROUTERS)}")
    return ROUTERS[name]


def make_router(name: str, setup: Setup, **options: Any) -> Router:
    """The router `name` from `ROUTERS`, built for `setup`; `options` are `RouterOptions` fields."""
    return router_kind(name).build(setup, RouterOptions(**options))
