"""Shared pieces of the hostile-input tests (issue 18): a model dir fixture and filesystem faults.

The faults are injected in-process (the tests also run as root, where a read-only
mode bit stops nothing): every create or write under one directory fails the way
the kernel and MLX report it, EROFS (nothing can be created) or ENOSPC (files can
be created, their data cannot be written).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload before mlx.core)
import mlx.core as mx

# isort: on


def _under(path, root: Path) -> bool:
    try:
        p = Path(os.fsdecode(path)).absolute()
    except TypeError:  # a file descriptor
        return False
    return p == root or root in p.parents


def inject_write_failure(monkeypatch, root: Path, code: int) -> None:
    """From now on, creating or writing anything under `root` fails with `code` (EROFS or ENOSPC)."""
    root = Path(root).absolute()
    err = OSError(code, os.strerror(code))
    real_mkdir, real_open, real_os_open = os.mkdir, builtins.open, os.open
    real_save, real_replace = mx.save_safetensors, os.replace

    def fail(path):
        e = OSError(code, os.strerror(code), os.fsdecode(path))
        raise e from err

    def mkdir(path, *a, **k):
        if code == errno.EROFS and _under(path, root):
            fail(path)
        return real_mkdir(path, *a, **k)

    def os_open(path, flags, *a, **k):
        creates = flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR)
        if creates and code == errno.EROFS and _under(path, root):
            fail(path)
        return real_os_open(path, flags, *a, **k)

    def open_(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and _under(file, root):
            fail(file)
        return real_open(file, mode, *a, **k)

    def save(path, *a, **k):
        if _under(path, root):
            if code == errno.EROFS:
                raise RuntimeError(f"[save_safetensors] Failed to open file {path}")
            raise RuntimeError("[write] Unable to write 1024 bytes to file.")
        return real_save(path, *a, **k)

    def replace(src, dst):
        if code == errno.EROFS and _under(dst, root):
            fail(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # pathlib's write_text goes through io.open
    monkeypatch.setattr(mx, "save_safetensors", save)
    monkeypatch.setattr(os, "replace", replace)


def leftovers(directory: Path, name: str) -> list[str]:
    """Hidden temp/old siblings of output `name` in `directory`."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith(f".{name}."))
