"""The adapter set a router chooses from: loaded once, checked against the base, identified.

A gate is only meaningful for the exact adapters it was trained on, so each
adapter carries an identity (name + hash of its weights file) that a saved gate
records and checks on load.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from ..adapter_format import WEIGHTS_FILE, AdapterConfig, check_against_base, load_adapter
from ..errors import MixloraError


@dataclass
class Adapter:
    """One loaded adapter: its name, directory, config and `P.lora_a`/`P.lora_b` weights."""

    name: str
    path: str
    config: AdapterConfig
    weights: dict[str, mx.array]
    digest: str

    def module_paths(self) -> list[str]:
        return self.config.module_paths()

    def factors(self, path: str, weight: float = 1.0) -> tuple[mx.array, mx.array]:
        """(w·s·B, A) for one module, so that w·ΔW = B'·A."""
        s = weight * self.config.scale_of(path)
        return s * self.weights[f"{path}.lora_b"], self.weights[f"{path}.lora_a"]

    @property
    def task(self) -> str | None:
        return self.config.task

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "task": self.task, "digest": self.digest}


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_adapters(paths: list[str | Path], base: dict | None = None) -> list[Adapter]:
    """Load adapter dirs, refuse ones made for another base, and refuse duplicate names."""
    if not paths:
        raise MixloraError("no adapters given: pass at least one adapter directory")
    out: list[Adapter] = []
    for p in paths:
        config, weights = load_adapter(p)
        if base:
            check_against_base(config, weights, base, source=str(p))
        name = config.name or Path(p).resolve().name
        out.append(Adapter(name, str(p), config, weights, file_digest(Path(p) / WEIGHTS_FILE)))
    names = [a.name for a in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MixloraError(f"two adapters share the name {dup[0]!r}; rename one (config 'name')")
    return out


def adapter_index(adapters: list[Adapter], ref: str) -> int:
    """Index of an adapter by name or task."""
    for i, a in enumerate(adapters):
        if ref == a.name:
            return i
    for i, a in enumerate(adapters):
        if ref == a.task:
            return i
    raise MixloraError(f"no adapter named {ref!r}; have {', '.join(a.name for a in adapters)}")
