"""Find and swap submodules of an mlx-lm model by parameter path (``model.layers.3.mlp.up_proj``).

The one place that walks dotted module paths: LoRA attach/detach, routers that
wrap layers, fusing into weights and the layer count all go through here.
Swapping assigns into the parent module or layer list, which is what MLX's
`Module.update_modules` does at the leaf, without rebuilding a tree per call
(routers swap hundreds of modules per request).
"""

from __future__ import annotations

from typing import Any

import mlx.nn as nn

from .errors import MixloraError


def find_module(model: Any, path: str) -> Any | None:
    """The submodule at `path`, or None when the model has nothing there."""
    obj = model
    for part in path.split("."):
        if isinstance(obj, list):
            obj = obj[int(part)] if part.isdigit() and int(part) < len(obj) else None
        elif isinstance(obj, dict):
            obj = obj.get(part)
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def get_module(model: Any, path: str) -> Any:
    """The submodule at `path`; a clear error when there is none."""
    obj = find_module(model, path)
    if obj is None:
        raise MixloraError(f"the model has no module {path}")
    return obj


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at `path` (the path must exist)."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    get_module(parent, name)
    if isinstance(parent, list):
        parent[int(name)] = module
    else:
        setattr(parent, name, module)


def linear_at(model: Any, path: str) -> nn.Linear:
    """The plain `nn.Linear` at `path`; refuses a wrapped or quantized layer."""
    m = get_module(model, path)
    if not isinstance(m, nn.Linear):
        raise MixloraError(
            f"{path} is a {type(m).__name__}, not a plain Linear (is a LoRA attached?)"
        )
    return m


def n_layers(model: Any) -> int:
    """Number of decoder layers of an mlx-lm model (``model.layers``)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        layers = find_module(model, "model.layers")
    if not isinstance(layers, list):
        raise MixloraError("model has no decoder layers at model.layers")
    return len(layers)
