"""Add merged deltas into base weights: in memory (reversible) or as a new model directory.

A factor pair (B, A) is fused with one `mx.addmm(W, B, A)` per weight — the
concatenated, pre-scaled factors of a product-space merge, so no per-adapter
ΔW is ever formed; a dense ΔW is simply added. Arithmetic is fp32; the result
is cast back to the weight's dtype.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx

from ..errors import MixloraError
from ..io import atomic_dir, check_safetensors_header, write_json

Update = Any  # mx.array ΔW [out, in]  or  (B [out, r], A [r, in])


def _apply(w: mx.array, upd: Update, path: str) -> mx.array:
    if isinstance(upd, tuple):
        b, a = upd
        shape = (b.shape[0], a.shape[1])
    else:
        shape = tuple(upd.shape)
    if tuple(w.shape) != shape:
        raise MixloraError(f"{path}: base weight is {list(w.shape)} but the delta is {list(shape)}")
    w32 = w.astype(mx.float32)
    if isinstance(upd, tuple):
        new = mx.addmm(w32, upd[0].astype(mx.float32), upd[1].astype(mx.float32))
    else:
        new = w32 + upd.astype(mx.float32)
    return new.astype(w.dtype)


def _module(model: Any, path: str) -> Any:
    mod = model
    for part in path.split("."):
        if part.isdigit():
            mod = mod[int(part)] if isinstance(mod, list) and int(part) < len(mod) else None
        else:
            mod = getattr(mod, part, None)
        if mod is None:
            raise MixloraError(f"the model has no module {path}")
    if "scales" in mod or not isinstance(getattr(mod, "weight", None), mx.array):
        raise MixloraError(f"{path} is not a plain (unquantized) Linear; cannot fuse into it")
    return mod


def fuse_deltas(model: Any, deltas: dict[str, Update]) -> dict[str, mx.array]:
    """Add each ΔW (or B·A) into `model`'s Linear weights in place; returns a restore handle.

    The handle holds the original weight arrays themselves (MLX arrays are
    immutable), so `restore` puts back bit-identical weights.
    """
    mods = {p: _module(model, p) for p in deltas}  # validate every path before changing any
    handle: dict[str, mx.array] = {}
    new = {p: _apply(mods[p].weight, upd, p) for p, upd in deltas.items()}
    mx.eval(new)
    for p, w in new.items():
        handle[p] = mods[p].weight
        mods[p].weight = w
    return handle


def restore(model: Any, handle: dict[str, mx.array]) -> None:
    """Undo `fuse_deltas`: put the exact original arrays back."""
    for p, w in handle.items():
        _module(model, p).weight = w


def merge_into_base(
    model_dir: str | Path,
    deltas: dict[str, Update],
    out_dir: str | Path,
    base_identity: dict | None = None,
    card: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model_dir` with deltas fused into its weights as a new MLX model dir, atomically.

    Non-weight files (config, tokenizer, index) are copied; shards no delta
    touches are copied byte for byte; touched shards are rewritten. When
    `base_identity` (an adapter's recorded base) is given, a different base is refused.
    """
    from ..model import _require_model_dir
    from ..model import base_identity as _identity

    src, config = _require_model_dir(model_dir)
    if base_identity:
        mine = _identity(src)
        for key in ("hidden_size", "num_hidden_layers", "fingerprint"):
            if base_identity.get(key) is not None and base_identity[key] != mine.get(key):
                raise MixloraError(
                    f"{src} is not the base these adapters were made for "
                    f"({key} {mine.get(key)} vs {base_identity[key]})"
                )
    if config.get("quantization"):
        raise MixloraError(f"{src} is quantized; merge into an unquantized (fp32/bf16/fp16) base")
    shards = sorted(src.glob("*.safetensors"))
    owner: dict[str, Path] = {}
    for shard in shards:
        for key in check_safetensors_header(shard):
            owner[key] = shard
    wanted = {f"{p}.weight": p for p in deltas}
    missing = sorted(k for k in wanted if k not in owner)
    if missing:
        raise MixloraError(f"{src} has no weight {missing[0]} (the adapters target another model)")
    touched = {owner[k] for k in wanted}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for f in src.iterdir():
            if f.is_file() and f not in touched and f.name != "mixlora_merge.json":
                shutil.copy2(f, tmp / f.name)
        for shard in sorted(touched):
            arrays = mx.load(str(shard))
            meta = _metadata(shard)
            for key in list(arrays):
                if key in wanted:
                    arrays[key] = _apply(arrays[key], deltas[wanted[key]], wanted[key])
            mx.save_safetensors(str(tmp / shard.name), arrays, metadata=meta)
            del arrays
        write_json(tmp / "mixlora_merge.json", {"base": str(src), **(card or {})})
    return Path(out_dir)


def _metadata(shard: Path) -> dict[str, str]:
    meta = check_safetensors_header(shard).get("__metadata__") or {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
