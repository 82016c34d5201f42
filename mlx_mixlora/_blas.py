"""Load OpenBLAS before MLX on Linux.

The Linux `mlx[cpu]` wheel links a reference BLAS (~4 GFLOP/s fp32 GEMM on a
2-core x86 box). Loading `libopenblas.so.0` with RTLD_GLOBAL *before* the first
`import mlx.core` makes MLX's `cblas_*` symbols resolve to OpenBLAS (~45x).
This module must not import mlx.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

OPENBLAS_SONAME = "libopenblas.so.0"
INSTALL_HINT = "apt-get install libopenblas0-pthread"

_state: dict[str, object] = {"loaded": False, "path": None, "reason": "not attempted"}


def preload_openblas() -> bool:
    """Load OpenBLAS globally if we are on Linux and mlx.core is not yet imported.

    Returns True when OpenBLAS is (now) loaded into the process. Set
    MIXLORA_NO_OPENBLAS=1 to skip (for measuring the reference BLAS);
    MIXLORA_OPENBLAS_LIB names another library file or path.
    """
    if _state["loaded"]:
        return True
    if not sys.platform.startswith("linux"):
        _state["reason"] = "not Linux (MLX uses Accelerate/Metal)"
        return False
    if os.environ.get("MIXLORA_NO_OPENBLAS") == "1":
        _state["reason"] = "disabled by MIXLORA_NO_OPENBLAS=1"
        return False
    if "mlx.core" in sys.modules:
        _state["reason"] = "mlx.core was imported before mlx_mixlora"
        return False
    soname = os.environ.get("MIXLORA_OPENBLAS_LIB", OPENBLAS_SONAME)
    try:
        handle = ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        _state["reason"] = f"{soname} not found"
        warnings.warn(
            f"mlx_mixlora: {soname} not found; MLX CPU matmuls use the slow "
            f"reference BLAS. Install it with: {INSTALL_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    _state["loaded"] = True
    _state["path"] = _library_path(handle) or OPENBLAS_SONAME
    _state["reason"] = "loaded"
    return True


def _library_path(handle: ctypes.CDLL) -> str | None:
    """Resolve the on-disk path of a loaded library via /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "libopenblas" in path and ".so" in path:
                    return path
    except OSError:
        return None
    return None


def blas_status() -> dict[str, object]:
    """What BLAS this process uses, for `mixlora doctor` and benchmark records."""
    return dict(_state)
