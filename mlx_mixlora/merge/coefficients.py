"""The merged forward with merge coefficients as inputs: what learned merges search over.

Each adapted Linear becomes a `WeightedLoRALinear`: the base plus every adapter's
update at once, ``y = x·Wᵀ + Σᵢ λᵢ·sᵢ·(x·Aᵢᵀ)·Bᵢᵀ``, computed as two GEMMs with
the adapters' factors side by side (A stacked [Σr, in], sᵢ·Bᵢ side by side
[out, Σr]) and λ multiplied onto the Σr middle columns. ΔW is never formed, and
the gradient with respect to λ is an ordinary MLX autodiff.

A `CoefficientTable` says which λ each layer reads: one per adapter
(``task`` granularity), per adapter × layer (``layer``), or per adapter × layer
× target module (``module``). `merged_weights` turns a table into the per-module
weight vectors `merge_adapters(..., "linear", module_weights=...)` writes as an
ordinary adapter (the same exact rank-Σr concatenation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..adapter_format import TARGET_PARENT, Adapter, parse_module_path
from ..errors import MixloraError
from ..modules import find_module, set_module
from .methods import GRANULARITIES


class WeightedLoRALinear(nn.Module):
    """A frozen Linear plus n LoRA updates weighted by `lam` (set before each forward)."""

    def __init__(self, base: nn.Module, a_cat: mx.array, b_cat: mx.array, spread: mx.array):
        super().__init__()
        self.base = base
        self.a_t = a_cat.T  # [in, Σr]
        self.b_t = b_cat.T  # [Σr, out], scales folded in
        self.spread = spread  # [n, Σr] one-hot: adapter i owns its r columns
        self.lam = mx.ones((spread.shape[0],))
        self.freeze()

    def __call__(self, x: mx.array) -> mx.array:
        cols = self.lam @ self.spread  # λ of each middle column
        return self.base(x) + ((x @ self.a_t) * cols) @ self.b_t


@dataclass(frozen=True)
class CoefficientTable:
    """Shape and lookup of the learned λ: [n] (task), [L, n] (layer) or [L, T, n] (module)."""

    granularity: str
    n_adapters: int
    n_layers: int
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise MixloraError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        if self.granularity == "task":
            return (self.n_adapters,)
        if self.granularity == "layer":
            return (self.n_layers, self.n_adapters)
        return (self.n_layers, len(self.targets), self.n_adapters)

    def row(self, lam: mx.array, path: str) -> mx.array:
        """The [n] λ vector module `path` uses."""
        layer, target = parse_module_path(path)
        if self.granularity == "task":
            return lam
        if self.granularity == "layer":
            return lam[layer]
        return lam[layer, self.targets.index(target)]

    def full(self, value: float) -> mx.array:
        return mx.full(self.shape, value, dtype=mx.float32)


def table_for(adapters: Sequence[Adapter], granularity: str, n_layers: int) -> CoefficientTable:
    present = {parse_module_path(p)[1] for a in adapters for p in a.module_paths()}
    targets = tuple(t for t in TARGET_PARENT if t in present)
    return CoefficientTable(granularity, len(adapters), n_layers, targets)


def _weighted_layer(base: nn.Module, adapters: Sequence[Adapter], path: str) -> WeightedLoRALinear:
    a_parts, b_parts, owner = [], [], []
    for i, ad in enumerate(adapters):
        if path not in ad.module_paths():
            continue
        b, a = ad.factors(path)  # s·B, A
        a_parts.append(a.astype(mx.float32))
        b_parts.append(b.astype(mx.float32))
        owner += [i] * a.shape[0]
    spread = (mx.arange(len(adapters))[:, None] == mx.array(owner)[None, :]).astype(mx.float32)
    return WeightedLoRALinear(
        base, mx.concatenate(a_parts, axis=0), mx.concatenate(b_parts, axis=1), spread
    )


@contextlib.contextmanager
def weighted_adapters(model: nn.Module, adapters: Sequence[Adapter]) -> Iterator[dict]:
    """Wrap every module any adapter adapts; yields {path: layer}; restores the model on exit."""
    paths = sorted({p for a in adapters for p in a.module_paths()})
    layers: dict[str, WeightedLoRALinear] = {}
    try:
        for p in paths:
            base = find_module(model, p)
            if not isinstance(base, nn.Linear):
                found = "nothing" if base is None else type(base).__name__
                raise MixloraError(f"{p} is {found} in this model, not a plain Linear")
            layers[p] = _weighted_layer(base, adapters, p)
            set_module(model, p, layers[p])
        yield layers
    finally:
        for p, layer in layers.items():
            set_module(model, p, layer.base)


def set_coefficients(
    layers: dict[str, WeightedLoRALinear], table: CoefficientTable, lam: mx.array
) -> None:
    """Point every wrapped layer at its row of `lam` (inside a traced function: differentiable)."""
    for p, layer in layers.items():
        layer.lam = table.row(lam, p)


def merged_weights(table: CoefficientTable, lam: mx.array, paths: Sequence[str]) -> dict:
    """{module path: [λ per adapter]}: what `merge_adapters(module_weights=...)` writes."""
    return {p: [float(x) for x in table.row(lam, p).tolist()] for p in paths}
