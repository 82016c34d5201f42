"""Write merged deltas into a copy of the base model directory, tile by tile.

The arithmetic is `fuse.fused_weight` (one addmm per tile of rows); this
module adds the file side: clone the base, patch only the fused tensors' bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..clone import clone_or_copy
from ..errors import MixloraError
from ..fuse import Update, check_update_shape, fused_weight
from ..identity import check_same_base
from ..io import atomic_dir, check_safetensors_header, write_json
from ..model import _require_model_dir
from ..model import base_identity as _identity
from ..validate import finite_tensors


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
    the affected weights (streamed in row tiles, see `_patch_shard`).
    mixlora_merge.json records clone or copy per file. When `base_identity` (an
    adapter's recorded base) is given, a different base is refused.
    """
    src, config = _require_model_dir(model_dir)
    if base_identity:
        mine = _identity(src)
        for key in ("hidden_size", "num_hidden_layers"):
            if base_identity.get(key) is not None and base_identity[key] != mine.get(key):
                raise MixloraError(
                    f"{src} is not the base these adapters were made for "
                    f"({key} {mine.get(key)} vs {base_identity[key]})"
                )
        check_same_base(base_identity, mine, f"{src}")
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
    for key, path in wanted.items():
        _check_fusable(owner[key], key, headers[owner[key]][key], deltas[path])
    touched = {owner[k] for k in wanted}
    files: dict[str, str] = {}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name != "mixlora_merge.json":
                files[f.name] = clone_or_copy(f, tmp / f.name)
        for shard in sorted(touched):
            mine = {k: deltas[p] for k, p in wanted.items() if owner[k] == shard}
            _patch_shard(shard, headers[shard], tmp / shard.name, mine)
        record = {"base": str(src), **(card or {}), "files": files}
        # no temp file + fsync of its own: the directory's rename publishes it with the shards
        write_json(tmp / "mixlora_merge.json", record, atomic=False)
    return Path(out_dir)


# safetensors dtype -> (dtype the bytes are read and written as, dtype MLX fuses in);
# numpy has no bfloat16, so BF16 bytes travel as uint16 and are viewed as bfloat16.
_FUSABLE = {
    "F32": (mx.float32, mx.float32),
    "F16": (mx.float16, mx.float16),
    "BF16": (mx.uint16, mx.bfloat16),
}

TILE_BYTES = 2 << 20
"""Bytes of one weight fused per step when writing a model dir.

Small enough that a tile stays in a core's cache from the read through the
addmm to the write (2 MiB is the L2 of the Linux box we measure on). The tile
sweep in benchmarks/merge_speed.py was fastest at 2 MiB of 0.5-64 MiB.
"""


def _check_fusable(shard: Path, key: str, info: dict, upd: Update) -> None:
    """Refuse, before anything is written, a weight we cannot patch in place."""
    dtype, shape = info.get("dtype"), info.get("shape")
    if dtype not in _FUSABLE:
        raise MixloraError(f"{shard}: {key} has dtype {dtype}; cannot fuse into it")
    if not isinstance(shape, list) or len(shape) != 2:
        raise MixloraError(f"{shard}: {key} has shape {shape}; only 2-D Linear weights fuse")
    check_update_shape(tuple(shape), upd, key[: -len(".weight")])
    start, stop = info["data_offsets"]
    if stop - start != shape[0] * shape[1] * _FUSABLE[dtype][0].size:
        raise MixloraError(f"{shard}: {key} has {stop - start} bytes, not {shape} of {dtype}")


def _patch_shard(src: Path, header: dict, dst: Path, updates: dict[str, Update]) -> None:
    """Overwrite each updated tensor's byte range in `dst`, a clone or copy of `src`.

    `header` is `src`'s checked safetensors header; `_check_fusable` passed for
    every updated key. Each weight streams through in row tiles of about
    TILE_BYTES: while MLX fuses one tile (addmm of the factor rows, on the CPU
    stream), this thread writes the previous tile and reads the next, so reading,
    fusing and writing overlap and a tile never leaves the cache. Tile buffers
    are reused: a tile that has been written takes the next read (writing
    through a NumPy view of an evaluated array that nothing else holds).
    """
    with open(src, "rb") as f:
        data_start = 8 + struct.unpack("<Q", f.read(8))[0]
    mx.eval(list(updates.values()))  # lazy deltas computed once, not once per tile
    finite_tensors(updates, source="merged update")
    pool: list[mx.array] = []
    pending: tuple[int, mx.array] | None = None
    with open(src, "rb", buffering=0) as fin, open(dst, "r+b", buffering=0) as fout:
        with mx.stream(mx.cpu):
            for key, r0, r1 in _tiles(header, updates):
                storage, compute = _FUSABLE[header[key]["dtype"]]
                cols = header[key]["shape"][1]
                offset = data_start + header[key]["data_offsets"][0] + r0 * cols * storage.size
                buf = _take(pool, (r1 - r0, cols), storage)
                _read_into(fin, buf, offset)
                tile = buf if compute == storage else buf.view(compute)
                del buf  # only the graph holds the tile now, so addmm may update it in place
                new = fused_weight(tile, _rows(updates[key], r0, r1))
                del tile
                new = new if new.dtype == storage else new.view(storage)
                mx.async_eval(new)
                if pending is not None:
                    pool = [_write(fout, *pending), *pool[:1]]
                pending = (offset, new)
                del new
            if pending is not None:
                _write(fout, *pending)


def _tiles(header: dict, updates: dict[str, Update]):
    for key in updates:
        rows, cols = header[key]["shape"]
        step = max(1, TILE_BYTES // (cols * _FUSABLE[header[key]["dtype"]][0].size))
        for r0 in range(0, rows, step):
            yield key, r0, min(rows, r0 + step)


def _rows(upd: Update, r0: int, r1: int) -> Update:
    return (upd[0][r0:r1], upd[1]) if isinstance(upd, tuple) else upd[r0:r1]


def _take(pool: list[mx.array], shape: tuple[int, int], dtype: mx.Dtype) -> mx.array:
    """A written tile of this shape from `pool`, or a new one."""
    for i, a in enumerate(pool):
        if tuple(a.shape) == shape and a.dtype == dtype:
            return pool.pop(i)
    a = mx.zeros(shape, dtype=dtype)
    mx.eval(a)
    return a


def _read_into(f, a: mx.array, offset: int) -> None:
    view = memoryview(np.array(a, copy=False)).cast("B")
    f.seek(offset)
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise MixloraError(f"{f.name} ended at byte {offset + got} inside a tensor")
        got += n


def _write(f, offset: int, a: mx.array) -> mx.array:
    mx.eval(a)
    view = memoryview(np.array(a, copy=False)).cast("B")
    f.seek(offset)
    done = 0
    while done < len(view):
        done += f.write(view[done:])
    return a
