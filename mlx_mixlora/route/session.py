"""Load what every routing command needs: model, tokenizer, adapters checked against the base."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapter_format import Adapter, load_adapters
from ..model import base_identity, load


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
    base = base_identity(model_dir)
    adapters = load_adapters(list(adapter_dirs), base=base)  # check adapters before loading weights
    model, tokenizer = load(model_dir)
    return Setup(model, tokenizer, adapters, base)
