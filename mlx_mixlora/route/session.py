"""Load what every routing command needs: model, tokenizer, adapters checked against the base."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapter_format import Adapter, load_adapters
from ..errors import MixloraError
from ..validate import same_base


@dataclass
class Setup:
    model: Any
    tokenizer: Any
    adapters: list[Adapter]
    base: dict

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]


def load_setup(model_dir: str | Path, adapter_dirs: Sequence[str | Path]) -> Setup:
    from ..model import base_identity, load

    base = base_identity(model_dir)
    adapters = load_adapters(list(adapter_dirs), base=base)  # check adapters before loading weights
    model, tokenizer = load(model_dir)
    return Setup(model, tokenizer, adapters, base)


def make_router(
    kind: str,
    setup: Setup,
    gate_dir: str | Path | None = None,
    layer: int | None = None,
    tasks: Sequence[str] | None = None,
    n_per_task: int = 200,
    data: str = "synthetic",
    pool: str | None = None,
) -> Any:
    """A router by name: gate (needs `gate_dir`), arrow, centroid, uniform, oracle."""
    from . import build, routers

    n = len(setup.adapters)
    if kind == "gate":
        if gate_dir is None:
            raise MixloraError(
                "the gate router needs --gate GATE_DIR (train one with `mixlora gate train`)"
            )
        from . import load_gate_router

        return same_base(load_gate_router(gate_dir, setup.adapters), setup.base, gate_dir)
    if kind == "arrow":
        return routers.ArrowRouter(setup.adapters)
    if kind == "centroid":
        return build.build_centroid(
            setup.model,
            setup.tokenizer,
            setup.adapters,
            layer=layer,
            tasks=tasks,
            n_per_task=n_per_task,
            data=data,
            pool=pool,
        )
    if kind == "uniform":
        return routers.UniformRouter(n)
    if kind == "oracle":
        return routers.OracleRouter(n)
    raise MixloraError(f"unknown router {kind!r}; use gate, arrow, centroid, uniform or oracle")
