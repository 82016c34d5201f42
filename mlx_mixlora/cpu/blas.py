"""Load OpenBLAS before MLX on Linux.

The Linux `mlx[cpu]` wheel links a reference BLAS (~4 GFLOP/s fp32 GEMM on a
2-core x86 box). Loading `libopenblas.so.0` with RTLD_GLOBAL *before* the first
`import mlx.core` makes MLX's `cblas_*` symbols resolve to OpenBLAS (~45x).

OpenBLAS picks its kernels when it loads. Debian 12's 0.3.21 files AMD Zen 4/5
under its AVX2 "Haswell" kernels although these CPUs run the AVX-512
"SkylakeX" kernels: a 1024^3 fp32 GEMM ran at 485 GFLOP/s instead of 252 on a
2-core Zen 5 (`mixlora doctor` with and without OPENBLAS_CORETYPE=Haswell).
So on an AMD CPU with AVX-512 we ask for SkylakeX (`OPENBLAS_CORETYPE`), unless
the user named a core type. Matrix-vector products (decode steps) go to
OpenBLAS's GEMV through `gemv_shim`. This module must not import mlx.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

from .gemv_shim import install as install_gemv_shim

OPENBLAS_SONAME = "libopenblas.so.0"
INSTALL_HINT = "apt-get install libopenblas0-pthread"

# The AVX-512 subsets OpenBLAS's SkylakeX kernels use.
SKYLAKEX_FLAGS = frozenset({"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"})

_state: dict[str, object] = {
    "loaded": False,
    "path": None,
    "reason": "not attempted",
    "core": None,
    "core_chosen_by": None,
}


def coretype_for(cpuinfo: str) -> str | None:
    """The OpenBLAS core type to ask for, given /proc/cpuinfo text (None: let OpenBLAS pick)."""
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    if vendor == "AuthenticAMD" and SKYLAKEX_FLAGS <= flags:
        return "SkylakeX"
    return None


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


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
    coretype = None if "OPENBLAS_CORETYPE" in os.environ else coretype_for(_read_cpuinfo())
    if coretype:  # read once, by OpenBLAS's load-time constructor; not left for child processes
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        handle = ctypes.CDLL(soname, mode=ctypes.RTLD_LOCAL)
    except OSError:
        _state["reason"] = f"{soname} not found"
        warnings.warn(
            f"mlx_mixlora: {soname} not found; MLX CPU matmuls use the slow "
            f"reference BLAS. Install it with: {INSTALL_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    finally:
        if coretype:
            del os.environ["OPENBLAS_CORETYPE"]
    install_gemv_shim(handle)  # its cblas_sgemm must enter the global scope before OpenBLAS's
    ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)  # now MLX's cblas_* resolve here
    _state["core"] = _core_name(handle)
    if coretype:
        _state["core_chosen_by"] = "mlx_mixlora (AMD CPU with AVX-512)"
    elif "OPENBLAS_CORETYPE" in os.environ:
        _state["core_chosen_by"] = "OPENBLAS_CORETYPE"
    else:
        _state["core_chosen_by"] = "OpenBLAS"
    _state["loaded"] = True
    _state["path"] = _library_path(handle) or OPENBLAS_SONAME
    _state["reason"] = "loaded"
    return True


def _core_name(handle: ctypes.CDLL) -> str | None:
    """The kernel family OpenBLAS runs ("Haswell", "SkylakeX", ...), if it says."""
    try:
        get = handle.openblas_get_corename
    except AttributeError:
        return None
    get.restype = ctypes.c_char_p
    name = get()
    return name.decode() if name else None


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
