"""Copy-on-write file clones, so a new model dir costs only the bytes that change.

Merging adapters into a base writes a whole new model directory, yet only the
adapted weights differ from the base. On filesystems with block sharing (APFS on
a Mac via `clonefile`, XFS/Btrfs on Linux via the FICLONE ioctl) the copy of the
base is a metadata operation and the later in-place patch of the fused tensors
allocates new blocks for those bytes only. Elsewhere (ext4, tmpfs, across
filesystems) it falls back to an ordinary copy, and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
from pathlib import Path

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
_FALLBACK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


def _clone_linux(src: Path, dst: Path) -> bool:
    import fcntl

    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        except OSError as e:
            if e.errno in _FALLBACK:
                return False
            raise
    return True


def _clone_macos(src: Path, dst: Path) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(libc, "clonefile", None)
    if fn is None:
        return False
    if fn(os.fsencode(src), os.fsencode(dst), ctypes.c_int(0)) == 0:
        return True
    if ctypes.get_errno() in _FALLBACK | {errno.ENOTSUP}:
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(dst))


def clone_or_copy(src: str | Path, dst: str | Path) -> str:
    """Make `dst` a copy of `src` (which must not exist yet); "clone" when blocks are shared, else "copy"."""
    src, dst = Path(src), Path(dst)
    cloned = False
    if sys.platform.startswith("linux"):
        cloned = _clone_linux(src, dst)
    elif sys.platform == "darwin":
        cloned = _clone_macos(src, dst)
    if cloned:
        shutil.copystat(src, dst)
        return "clone"
    dst.unlink(missing_ok=True)
    shutil.copy2(src, dst)
    return "copy"
