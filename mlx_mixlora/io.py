"""Atomic outputs and bounded, pickle-free inputs.

Every command writes its output to a temporary sibling path and renames it into
place only when complete, so a failure or a kill never leaves half an output.
Temp names carry the writer's pid (`.OUT.tmp-PID-XXXX`, `.OUT.old-PID`), so a
later run can tell the debris of a killed run (owner gone, or older than a
day) from a live writer's, and sweeps only those. Every `OSError` on the way
(read-only or full disk, permissions, links) becomes one `MixloraError` naming
the output and the cause.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MixloraError
from .validate import loads_json, regular_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors spec's own limit
STALE_AFTER_S = 24 * 3600  # a temp whose owner we cannot identify is debris after a day
LIVE_OWNER_STALE_AFTER_S = 7 * 24 * 3600  # a live pid this old was most likely reused
_OWNED = re.compile(r"^(?:tmp|old)-(\d+)(?:-|$)")


def output_path(dst: str | Path, overwrite: bool, kind: str = "dir") -> Path:
    """Check an output path before any work: free (or `overwrite`), not the working dir, right kind.

    Returns the absolute path. A dangling symlink counts as existing; with
    `overwrite` the link itself is replaced, never what it points to.
    """
    path = Path(os.path.abspath(dst))
    cwd = Path.cwd()
    if path == Path(path.anchor) or path == cwd or path in cwd.parents:
        raise MixloraError(
            f"output path {dst} is the current directory or one above it; name a new path"
        )
    if os.path.lexists(path):
        if not overwrite:
            link = " (a dangling symbolic link)" if not path.exists() else ""
            raise MixloraError(
                f"output path {dst} already exists{link} (choose another path or pass --overwrite)"
            )
        if kind == "file" and path.is_dir() and not path.is_symlink():
            raise MixloraError(f"output path {dst} is a directory; name a file")
    return path


def refuse_overlap(out: str | Path, *inputs: str | Path | None) -> None:
    """An output that is, contains or lies inside an input would destroy or alter it: refuse."""
    o = Path(out).resolve()
    for given in inputs:
        if given is None or not os.path.lexists(given):
            continue
        i = Path(given).resolve()
        if o == i or i in o.parents or o in i.parents:
            raise MixloraError(
                f"output path {out} overlaps the input {given}; write the output somewhere else"
            )


def check_output(
    out: str | Path, overwrite: bool, *inputs: str | Path | None, kind: str = "dir"
) -> Path:
    """What every command does first with its output path: `output_path` + `refuse_overlap`."""
    path = output_path(out, overwrite, kind)
    refuse_overlap(out, *inputs)
    return path


def _write_error(dst: Path, e: OSError) -> MixloraError:
    return MixloraError(f"cannot write {dst}: {e.strerror or e}")


def _is_mlx_write_error(e: RuntimeError) -> bool:
    """MLX reports a failed save (full disk, no permission) as a RuntimeError without errno."""
    msg = str(e)
    return msg.startswith(("[write]", "[save")) or "Failed to open file" in msg


def _remove(path: Path) -> None:
    """Remove a file, link or tree; never follows a link."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


def _owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def sweep_stale(parent: str | Path, name: str) -> list[Path]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` left by killed runs in `parent` (`name` may be a glob).

    Only our own temp names are looked at, and only those whose writer is gone
    (the pid in the name no longer runs, or it is a week old: that pid was
    reused) or, for names without a pid, older than a day.
    """
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    now = time.time()
    for p in list(parent.glob(f".{name}.tmp-*")) + list(parent.glob(f".{name}.old-*")):
        m = _OWNED.match(p.name.rsplit(".", 1)[-1])
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        if m:
            stale = not _owner_alive(int(m.group(1))) or age > LIVE_OWNER_STALE_AFTER_S
        else:
            stale = age > STALE_AFTER_S
        if stale:
            _remove(p)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp dir next to `dst`; on success rename it to `dst`, else delete it."""
    shown = dst
    dst = output_path(dst, overwrite)
    sweep_stale(dst.parent, glob_escape(dst.name))
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-{os.getpid()}-", dir=dst.parent))
    except OSError as e:
        raise _write_error(Path(shown), e) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        _publish(tmp, dst)
    except OSError as e:
        _remove(tmp)
        raise _write_error(Path(shown), e) from None
    except RuntimeError as e:
        _remove(tmp)
        if _is_mlx_write_error(e):
            raise MixloraError(f"cannot write {shown}: {e} (disk full or not writable?)") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _aside(dst: Path) -> Path:
    """Where `dst` is moved before it is replaced or deleted: a name `sweep_stale` clears."""
    return dst.with_name(f".{dst.name}.old-{os.getpid()}")


def remove_published(dst: str | Path) -> None:
    """Delete a published output so that a kill midway leaves nothing partial under its name.

    It is renamed aside first (atomic), then removed; what a kill leaves is a hidden
    `.NAME.old-PID` that the next `sweep_stale` clears.
    """
    dst = Path(dst)
    old = _aside(dst)
    _remove(old)
    with contextlib.suppress(FileNotFoundError):
        os.replace(dst, old)
    _remove(old)


def _publish(tmp: Path, dst: Path) -> None:
    """Rename `tmp` onto `dst`; an existing `dst` is moved aside first and restored on failure."""
    if not os.path.lexists(dst):
        os.replace(tmp, dst)
        return
    old = _aside(dst)
    _remove(old)
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except OSError:
        os.replace(old, dst)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_file(dst: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp file path next to `dst`; fsync and rename it on success."""
    shown = dst
    dst = output_path(dst, overwrite, kind="file")
    sweep_stale(dst.parent, glob_escape(dst.name))
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.tmp-{os.getpid()}-", dir=dst.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(Path(shown), e) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(Path(shown), e) from None
    except RuntimeError as e:
        tmp.unlink(missing_ok=True)
        if _is_mlx_write_error(e):
            raise MixloraError(f"cannot write {shown}: {e} (disk full or not writable?)") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


def _tensor_entry(path: Path, key: str, info: object) -> int:
    """One header entry: known dtype, a shape of non-negative ints, offsets that hold exactly it."""

    def ints(v, n=None):
        return (
            isinstance(v, list)
            and (n is None or len(v) == n)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        )

    if not isinstance(info, dict) or not ints(info.get("data_offsets"), 2):
        raise MixloraError(f"{path}: tensor {key!r} has no valid data_offsets")
    start, stop = info["data_offsets"]
    dtype, shape = info.get("dtype"), info.get("shape")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BYTES or not ints(shape):
        raise MixloraError(
            f"{path}: tensor {key!r} has an invalid dtype {dtype!r} or shape {shape!r}"
        )
    need = SAFETENSORS_DTYPE_BYTES[dtype] * math.prod(shape)
    if stop - start != need:
        raise MixloraError(
            f"{path}: {key} has {stop - start} bytes, not {shape} of {dtype} ({need} bytes)"
        )
    return stop


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
        obj = loads_json(regular_file(path, what).read_text(), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MixloraError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MixloraError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def read_yaml(path: str | Path, what: str = "yaml file") -> Any:
    """Parse a yaml file with the safe loader, turning every failure into one clear MixloraError."""
    import yaml  # ~30 ms to import; only recipe and task files need it

    path = Path(path)
    if not path.is_file():
        raise MixloraError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(regular_file(path, what).read_text())
    except UnicodeDecodeError as e:
        raise MixloraError(f"{what} {path} is not text: {e}") from None
    except yaml.YAMLError as e:
        raise MixloraError(f"{path} is not valid yaml: {str(e).splitlines()[0]}") from None


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
    path = regular_file(path, "safetensors file")
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
        stop = _tensor_entry(path, key, info)
        end = max(end, stop)
    if 8 + n + end > size:
        raise MixloraError(
            f"{path} is truncated: tensors need {8 + n + end} bytes, file has {size}"
        )
    return header
