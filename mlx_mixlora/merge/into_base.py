"""Add merged deltas into base weights: in memory (reversible) or as a new model directory.

A factor pair (B, A) is fused with one `mx.addmm(W, B, A)` per weight — the
concatenated, pre-scaled factors of a product-space merge, so no per-adapter
ΔW is ever formed; a dense ΔW is simply added. Arithmetic is fp32; the result
is cast back to the weight's dtype.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..clone import clone_or_copy
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
    if not isinstance(getattr(mod, "weight", None), mx.array) and "base" in mod:
        mod = mod.base  # a LoRA wrapper (mlx_mixlora.lora.LoRALinear): fuse into its base
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

    Every file is cloned where the filesystem shares blocks (APFS, XFS, Btrfs)
    and copied byte for byte elsewhere; in the new shard only the fused tensors'
    bytes are then overwritten in place — dtypes, shapes and hence the header
    stay the same — so with a clone the whole job is one read and one write of
    the affected weights. mixlora_merge.json records clone or copy per file. When
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
    headers = {
        shard: check_safetensors_header(shard) for shard in sorted(src.glob("*.safetensors"))
    }
    owner = {key: shard for shard, header in headers.items() for key in header}
    wanted = {f"{p}.weight": p for p in deltas}
    missing = sorted(k for k in wanted if k not in owner)
    if missing:
        raise MixloraError(f"{src} has no weight {missing[0]} (the adapters target another model)")
    for key in wanted:
        dtype = headers[owner[key]][key].get("dtype")
        if dtype not in _FUSABLE:
            raise MixloraError(f"{owner[key]}: {key} has dtype {dtype}; cannot fuse into it")
    touched = {owner[k] for k in wanted}
    files: dict[str, str] = {}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name != "mixlora_merge.json":
                files[f.name] = clone_or_copy(f, tmp / f.name)
        for shard in sorted(touched):
            mine = {k: deltas[p] for k, p in wanted.items() if owner[k] == shard}
            _patch_shard(shard, headers[shard], tmp / shard.name, mine)
        write_json(tmp / "mixlora_merge.json", {"base": str(src), **(card or {}), "files": files})
    return Path(out_dir)


_FUSABLE = ("F32", "F16", "BF16")


def _patch_shard(src: Path, header: dict, dst: Path, updates: dict[str, Update]) -> None:
    """Overwrite each updated tensor's byte range in `dst`, a clone or copy of `src`.

    `header` is `src`'s checked safetensors header, with fusable dtypes for
    every updated key. `mx.load` reads a tensor only when it is evaluated,
    straight into the array that `addmm` then updates in place (nothing else
    holds it), so each fused weight is read once, updated once and written once.
    """
    with open(src, "rb") as f:
        data_start = 8 + struct.unpack("<Q", f.read(8))[0]
    weights = mx.load(str(src))
    lazy = {key: weights[key] for key in updates}
    del weights  # only the updated tensors are ever read
    with open(dst, "r+b") as fout:
        for key, upd in updates.items():
            start, stop = header[key]["data_offsets"]
            new = _apply(lazy.pop(key), upd, key[: -len(".weight")])
            if new.dtype == mx.bfloat16:
                new = new.view(mx.uint16)  # numpy has no bfloat16; the bytes are what we write
            mx.eval(new)
            buf = np.array(new, copy=False)
            if buf.nbytes != stop - start:
                raise MixloraError(f"internal: {key} changed size while fusing")
            fout.seek(data_start + start)
            fout.write(memoryview(np.ascontiguousarray(buf)).cast("B"))
