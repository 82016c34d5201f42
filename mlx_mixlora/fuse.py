"""Fuse low-rank updates into Linear weights: the one fuse path of the package.

A factor pair (B, A) — pre-scaled, possibly several adapters' factors
concatenated — is fused with one ``mx.addmm(W, B, A)`` per weight, so no ΔW is
formed; a dense ΔW is simply added. Arithmetic is fp32 and the result is cast
back to the weight's dtype. Merge-into-base (in memory and on disk), the
routing switcher and LoRA export all fuse through `fused_weight`.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from .errors import MixloraError
from .modules import get_module

Update = Any  # mx.array ΔW [out, in]  or  (B [out, r], A [r, in])


def update_shape(upd: Update) -> tuple[int, ...]:
    """The [out, in] shape an update adds to."""
    return (upd[0].shape[0], upd[1].shape[1]) if isinstance(upd, tuple) else tuple(upd.shape)


def check_update_shape(shape: tuple[int, ...], upd: Update, path: str) -> None:
    if tuple(shape) != update_shape(upd):
        raise MixloraError(
            f"{path}: base weight is {list(shape)} but the delta is {list(update_shape(upd))}"
        )


def fused_weight(w: mx.array, upd: Update) -> mx.array:
    """W + B·A (one addmm) or W + ΔW (lazy), in fp32, cast back to W's dtype."""
    w32 = w.astype(mx.float32)
    if isinstance(upd, tuple):
        new = mx.addmm(w32, upd[0].astype(mx.float32), upd[1].astype(mx.float32))
    else:
        new = w32 + upd.astype(mx.float32)
    return new.astype(w.dtype)


def fusable_linear(model: Any, path: str) -> Any:
    """The unquantized Linear at `path` (the base inside a LoRA wrapper); refuses anything else.

    A quantized weight would need a requantization that loses the base's exact
    values, so it is refused rather than fused.
    """
    mod = get_module(model, path)
    if not isinstance(getattr(mod, "weight", None), mx.array) and "base" in mod:
        mod = mod.base  # a LoRA wrapper (mlx_mixlora.lora.LoRALinear): fuse into its base
    if "scales" in mod or not isinstance(getattr(mod, "weight", None), mx.array):
        raise MixloraError(f"{path} is not a plain (unquantized) Linear; cannot fuse into it")
    return mod


def fuse_deltas(model: Any, deltas: dict[str, Update]) -> dict[str, mx.array]:
    """Add each ΔW (or B·A) into `model`'s Linear weights in place; returns a restore handle.

    The handle holds the original weight arrays themselves (MLX arrays are
    immutable), so `restore` puts back bit-identical weights. Every path is
    checked before any weight changes.
    """
    mods = {p: fusable_linear(model, p) for p in deltas}
    for p, upd in deltas.items():
        check_update_shape(mods[p].weight.shape, upd, p)
    new = {p: fused_weight(mods[p].weight, upd) for p, upd in deltas.items()}
    mx.eval(new)
    handle: dict[str, mx.array] = {}
    for p, w in new.items():
        handle[p] = mods[p].weight
        mods[p].weight = w
    return handle


def restore(model: Any, handle: dict[str, mx.array]) -> None:
    """Undo `fuse_deltas`: put the exact original arrays back."""
    for p, w in handle.items():
        fusable_linear(model, p).weight = w
