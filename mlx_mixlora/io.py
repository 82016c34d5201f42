"""Atomic outputs and bounded, pickle-free inputs.

Every command writes its output to a temporary sibling path and renames it into
place only when complete, so a failure or a kill never leaves half an output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import MixloraError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors spec's own limit


@contextlib.contextmanager
def atomic_dir(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp dir next to `dst`; on success rename it to `dst`, else delete it."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise MixloraError(
            f"output path {dst} already exists (choose another path or pass --overwrite)"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)


@contextlib.contextmanager
def atomic_file(dst: str | Path) -> Iterator[Path]:
    """Yield a temp file path next to `dst`; fsync and rename it on success."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.tmp-", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: object, atomic: bool = True) -> None:
    """Write JSON with stable formatting; atomically (temp file, fsync, rename) unless told not to.

    `atomic=False` is for files inside an `atomic_dir`, whose rename already
    publishes the whole directory at once.
    """
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    if not atomic:
        Path(path).write_text(text)
        return
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    """Read a JSON object, turning every failure into one clear MixloraError."""
    path = Path(path)
    if not path.is_file():
        raise MixloraError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MixloraError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MixloraError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def refuse_pickle(path: str | Path) -> None:
    """Raise if `path` is a pickle-based checkpoint: we never unpickle."""
    if str(path).endswith(PICKLE_SUFFIXES):
        raise MixloraError(
            f"refusing to load {path}: pickle checkpoints can run arbitrary code; "
            "convert it to safetensors first"
        )


def check_safetensors_header(path: str | Path) -> dict:
    """Read and sanity-check a safetensors header with a bounded read.

    Guards against truncated files and headers that claim absurd sizes before
    any tensor memory is mapped. Returns the parsed header.
    """
    path = Path(path)
    refuse_pickle(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise MixloraError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_SAFETENSORS_HEADER or n > size - 8:
                raise MixloraError(
                    f"{path} has a corrupt safetensors header (claims {n} header bytes, file has {size})"
                )
            header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MixloraError(f"{path} is not a readable safetensors file: {e}") from None
    if not isinstance(header, dict):
        raise MixloraError(f"{path} has a corrupt safetensors header")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise MixloraError(f"{path}: tensor {key!r} has no valid data_offsets") from None
        end = max(end, stop)
    if 8 + n + end > size:
        raise MixloraError(
            f"{path} is truncated: tensors need {8 + n + end} bytes, file has {size}"
        )
    return header
