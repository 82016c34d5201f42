"""What a router's weights turn into: which adapters run, at what mix, as one factor pair each.

`decide(probs, mode)`: ``top1`` (sparse), ``topk`` (k largest, renormalised —
executed as a weighted merge of the k), ``threshold`` (top-1 if its weight is at
least `threshold`, else the base model), ``all`` (every adapter at its weight).
`decision_updates` gives the factors every execution path fuses or stacks:
B' = [w₁s₁B₁ | w₂s₂B₂ …], A' = [A₁; A₂; …] per module, so B'·A' = Σ wᵢ·ΔWᵢ.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..adapter_format import Adapter
from ..errors import MixloraError

DECISION_MODES = ("top1", "topk", "threshold", "all")


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


def decision_updates(
    adapters: list[Adapter], decision: Decision
) -> dict[str, tuple[mx.array, mx.array]]:
    """{module path: (B', A')} with B'·A' = Σ wᵢ·ΔWᵢ over the decision's adapters."""
    parts: dict[str, list[tuple[mx.array, mx.array]]] = {}
    for i, w in zip(decision.indices, decision.weights, strict=True):
        if w == 0:
            continue
        for p in adapters[i].module_paths():
            parts.setdefault(p, []).append(adapters[i].factors(p, w))
    return {
        p: (mx.concatenate([b for b, _ in fs], axis=1), mx.concatenate([a for _, a in fs], axis=0))
        for p, fs in parts.items()
    }
