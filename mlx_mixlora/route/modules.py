"""Get and swap submodules by mlx-lm parameter path (e.g. model.layers.3.mlp.up_proj)."""

from __future__ import annotations

from typing import Any

import mlx.nn as nn

from ..errors import MixloraError


def get_module(model: Any, path: str) -> Any:
    obj = model
    for part in path.split("."):
        if isinstance(obj, list):
            if not part.isdigit() or int(part) >= len(obj):
                raise MixloraError(f"the model has no module {path}")
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            raise MixloraError(f"the model has no module {path}")
    return obj


def set_module(model: Any, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_module(model, parent), name, module)


def linear_at(model: Any, path: str) -> nn.Linear:
    m = get_module(model, path)
    if not isinstance(m, nn.Linear):
        raise MixloraError(
            f"{path} is a {type(m).__name__}, not a plain Linear (is a LoRA attached?)"
        )
    return m
