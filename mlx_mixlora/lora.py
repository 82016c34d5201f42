"""Our LoRA layers: wrap a frozen Linear/QuantizedLinear with a low-rank update.

``y = base(x) + s·(dropout(x)·Aᵀ)·Bᵀ`` with ``A`` [r, in] and ``B`` [out, r], the
orientation of the adapter format (and PEFT), so saving is a flat rename.
Init follows PEFT: A ~ kaiming-uniform(a=√5) = U(±1/√in), B = 0, so a fresh
adapter leaves the model unchanged. Fusing an adapter into weights is `fuse`'s
job (one addmm path shared by merge, routing and export).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .adapter_format import (
    TARGET_PARENT,
    AdapterConfig,
    check_against_base,
    check_weights,
    load_adapter,
    module_path,
)
from .errors import MixloraError
from .modules import find_module, n_layers, set_module


class LoRALinear(nn.Module):
    """A frozen `nn.Linear`/`nn.QuantizedLinear` plus a trainable rank-r update."""

    def __init__(self, base: nn.Module, rank: int, scale: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.QuantizedLinear)):
            raise MixloraError(
                f"LoRA wraps nn.Linear or nn.QuantizedLinear, got {type(base).__name__}"
            )
        if rank < 1:
            raise MixloraError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise MixloraError(f"LoRA dropout must be in [0, 1), got {dropout}")
        out_dims, in_dims = _base_shape(base)
        self.base = base
        self.scale = float(scale)
        self.dropout = float(dropout)
        bound = 1.0 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(-bound, bound, (rank, in_dims), dtype=mx.float32)
        self.lora_b = mx.zeros((out_dims, rank), dtype=mx.float32)

    @property
    def rank(self) -> int:
        return int(self.lora_a.shape[0])

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        if self.training and self.dropout > 0:
            keep = mx.random.bernoulli(1.0 - self.dropout, x.shape)
            x = mx.where(keep, x / (1.0 - self.dropout), mx.zeros_like(x))
        z = (x.astype(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
        return y + (self.scale * z).astype(y.dtype)


def _base_shape(base: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or QuantizedLinear (whose packed weight hides `in`)."""
    if isinstance(base, nn.QuantizedLinear):
        out_dims = base.weight.shape[0]
        in_dims = base.scales.shape[1] * base.group_size
        return int(out_dims), int(in_dims)
    return int(base.weight.shape[0]), int(base.weight.shape[1])


def parse_layers(spec: str | int | list[int], n_layers: int) -> list[int]:
    """Parse a layer selection: "all", "0-7", "0,3,5", "last:4", or mixes like "0-3,7"."""
    if n_layers < 1:
        raise MixloraError(f"model has no layers (n_layers={n_layers})")
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, (list, tuple)):
        layers = [int(x) for x in spec]
    else:
        text = str(spec).strip().lower()
        if text in ("all", "*", ""):
            return list(range(n_layers))
        layers = []
        for part in text.split(","):
            part = part.strip()
            try:
                if part.startswith("last:"):
                    k = int(part[5:])
                    if k < 1 or k > n_layers:
                        raise MixloraError(
                            f"layer selection {spec!r}: last:{k} needs 1..{n_layers} (the model has {n_layers} layers)"
                        )
                    layers.extend(range(n_layers - k, n_layers))
                elif "-" in part:
                    lo, hi = (int(x) for x in part.split("-", 1))
                    if lo > hi:
                        raise MixloraError(f"layer selection {spec!r}: range {part} is reversed")
                    layers.extend(range(lo, hi + 1))
                else:
                    layers.append(int(part))
            except ValueError:
                raise MixloraError(
                    f"layer selection {spec!r} is not understood; use all, 0-7, 0,3,5 or last:4"
                ) from None
    bad = [x for x in layers if x < 0 or x >= n_layers]
    if bad:
        raise MixloraError(
            f"layer selection {spec!r} uses layer {bad[0]} but the model has {n_layers} layers (0-{n_layers - 1})"
        )
    return sorted(set(layers))


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear in `model`, keyed by its module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def attach_lora(
    model: nn.Module, config: AdapterConfig, weights: dict[str, Any] | None = None
) -> list[str]:
    """Wrap the configured modules in LoRALinear, load `weights` if given, freeze the rest.

    Returns the adapted module paths. A fresh adapter draws A from mx.random, so
    seed it first for a reproducible init.
    """
    if lora_modules(model):
        raise MixloraError("model already has LoRA layers attached; call detach_lora first")
    n = n_layers(model)
    bad = [layer for layer in config.layers if layer >= n or layer < 0]
    if bad:
        raise MixloraError(
            f"adapter layer {bad[0]} is outside the model, which has {n} layers (0-{n - 1})"
        )
    for t in config.targets:
        if t not in TARGET_PARENT:
            raise MixloraError(
                f"target module {t!r} matches nothing; known: {', '.join(TARGET_PARENT)}"
            )
    paths = config.module_paths()
    bases = {}
    for p in paths:
        base = find_module(model, p)
        if not isinstance(base, (nn.Linear, nn.QuantizedLinear)):
            found = "nothing" if base is None else type(base).__name__
            raise MixloraError(f"target {p} matches {found} in this model, not a Linear layer")
        bases[p] = base
    if weights is not None:
        check_weights(
            config, {k: tuple(v.shape) for k, v in weights.items()}, source="adapter weights"
        )
    for p, base in bases.items():
        layer = LoRALinear(base, config.rank_of(p), config.scale_of(p), config.dropout)
        out_dims, in_dims = _base_shape(base)
        if weights is not None:
            a, b = weights[f"{p}.lora_a"], weights[f"{p}.lora_b"]
            if a.shape[1] != in_dims or b.shape[0] != out_dims:
                raise MixloraError(
                    f"adapter weights for {p} are for a [{b.shape[0]}, {a.shape[1]}] layer, "
                    f"this model's is [{out_dims}, {in_dims}]"
                )
            layer.lora_a = mx.array(a).astype(mx.float32)
            layer.lora_b = mx.array(b).astype(mx.float32)
        set_module(model, p, layer)
    model.freeze()
    for m in lora_modules(model).values():
        m.unfreeze(keys=["lora_a", "lora_b"], recurse=False)
    return paths


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    """The adapter-format dict {"P.lora_a": [r,in], "P.lora_b": [out,r]} of `model`."""
    out = {}
    for p, m in lora_modules(model).items():
        out[f"{p}.lora_a"] = m.lora_a
        out[f"{p}.lora_b"] = m.lora_b
    return out


def detach_lora(model: nn.Module) -> list[str]:
    """Replace every LoRALinear by its original base module (bit-identical)."""
    mods = lora_modules(model)
    for p, m in mods.items():
        set_module(model, p, m.base)
    return list(mods)


def model_identity(model: nn.Module) -> dict:
    """The shape part of `model.base_identity` taken from a loaded model's args."""
    args = getattr(model, "args", None)
    if args is None:
        return {}
    return {
        "model_type": getattr(args, "model_type", None),
        "hidden_size": getattr(args, "hidden_size", None),
        "intermediate_size": getattr(args, "intermediate_size", None),
        "num_hidden_layers": getattr(args, "num_hidden_layers", None),
        "num_attention_heads": getattr(args, "num_attention_heads", None),
        "num_key_value_heads": getattr(args, "num_key_value_heads", None),
        "vocab_size": getattr(args, "vocab_size", None),
    }


def load_adapter_into(
    model: nn.Module, adapter_dir: str | Path, base: dict | None = None
) -> AdapterConfig:
    """Read an adapter dir, check it fits this base, and attach it to `model`.

    `base` is `model.base_identity(model_dir)` when known (adds the weight
    fingerprint check); otherwise the shapes come from the model's args.
    """
    config, weights = load_adapter(adapter_dir)
    check_against_base(config, weights, base or model_identity(model), source=str(adapter_dir))
    attach_lora(model, config, weights)
    return config


__all__ = [
    "LoRALinear",
    "adapter_weights",
    "attach_lora",
    "detach_lora",
    "load_adapter_into",
    "lora_modules",
    "module_path",
    "n_layers",
    "parse_layers",
]
