"""Put OpenBLAS behind MLX's CPU matmuls on Linux, from a wheel or the system.

The Linux `mlx[cpu]` wheel links a reference BLAS (~4-8 GFLOP/s fp32 GEMM on a
2-core x86 box). Before the first `import mlx.core` we load a real one so
MLX's `cblas_*gemm` calls resolve to it (~10-50x). Two sources, tried in order:

- `scipy-openblas` — the `scipy-openblas32` wheel (a dependency on x86-64 and
  aarch64 Linux: NumPy's and SciPy's OpenBLAS build). Its symbols are prefixed
  (`scipy_cblas_sgemm`), so MLX cannot bind to it directly: the `gemv_shim`
  defines `cblas_sgemm`/`dgemm`/`cgemm` in the global scope and forwards there.
  That needs a C compiler once (the shim is built into the cache dir).
- `system` — Debian's `libopenblas.so.0` (or MIXLORA_OPENBLAS_LIB), loaded with
  RTLD_GLOBAL so its unprefixed `cblas_*` (and LAPACK) symbols win; the shim,
  when it builds, still sends one-row products to GEMV.

`MIXLORA_BLAS` forces one: `scipy-openblas`, `system`, `reference` (MLX's own,
nothing loaded) or `auto` (the default: the order above). A forced choice that
cannot be had, or an unknown name, is an error (`config_error()`), never a
silent fallback. MIXLORA_NO_OPENBLAS=1 is the older spelling of `reference`.

OpenBLAS picks its kernels when it loads. Debian 12's 0.3.21 files AMD Zen 4/5
under its AVX2 "Haswell" kernels although these CPUs run the AVX-512 "SkylakeX"
kernels (1024^3 fp32 GEMM 485 vs 252 GFLOP/s on a 2-core Zen 5), so for the
system library on an AMD CPU with AVX-512 we ask for SkylakeX
(`OPENBLAS_CORETYPE`) unless the user named a core type; the wheel's newer
OpenBLAS detects these CPUs itself. This module must not import mlx.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import warnings
from pathlib import Path

from .gemv_shim import install as install_gemv_shim
from .gemv_shim import shim_status

ENV = "MIXLORA_BLAS"
CHOICES = ("auto", "scipy-openblas", "system", "reference")
OPENBLAS_SONAME = "libopenblas.so.0"
WHEEL = "scipy-openblas32"
WHEEL_PREFIX = "scipy_"
INSTALL_HINT = (
    f"pip install {WHEEL} (and a C compiler, cc), or apt-get install libopenblas0-pthread"
)

# The AVX-512 subsets OpenBLAS's SkylakeX kernels use.
SKYLAKEX_FLAGS = frozenset({"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"})

_state: dict[str, object] = {
    "loaded": False,
    "name": "reference",
    "path": None,
    "reason": "not attempted",
    "why": None,
    "core": None,
    "core_chosen_by": None,
    "version": None,
}
_error: str | None = None
_handle: ctypes.CDLL | None = None
_prefix = ""


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


def requested() -> str:
    """The BLAS asked for by the environment ("auto" when nothing is set); may be invalid."""
    value = os.environ.get(ENV, "").strip().lower()
    if not value and os.environ.get("MIXLORA_NO_OPENBLAS") == "1":
        return "reference"
    return value or "auto"


def wheel_library() -> Path | None:
    """The shared library inside the installed scipy-openblas32 wheel (without importing it)."""
    try:
        spec = importlib.util.find_spec("scipy_openblas32")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        libs = sorted((Path(folder) / "lib").glob("libscipy_openblas*.so*"))
        if libs:
            return libs[0]
    return None


def config_error() -> str | None:
    """Why MIXLORA_BLAS could not be honoured (the CLI exits with it), or None."""
    return _error


def preload_openblas() -> bool:
    """Load the chosen OpenBLAS if we are on Linux and mlx.core is not yet imported.

    Returns True when an OpenBLAS now serves MLX's matmuls. Never raises: a bad
    or unavailable MIXLORA_BLAS is recorded for `config_error()`, which the
    `mixlora` command exits with (one error line); any other process gets a warning.
    """
    if _state["loaded"]:
        return True
    if not sys.platform.startswith("linux"):
        _state["reason"] = "not Linux (MLX uses Accelerate/Metal)"
        return False
    choice = requested()
    if choice not in CHOICES:
        return _fail(f"{ENV}={choice!r} is not one of {', '.join(CHOICES)}")
    if "mlx.core" in sys.modules:
        _state["reason"] = "mlx.core was imported before mlx_mixlora"
        return False
    if choice == "reference":
        how = f"{ENV}=reference" if os.environ.get(ENV) else "MIXLORA_NO_OPENBLAS=1"
        _state["reason"] = f"chosen by {how}"
        return False
    tried = []
    for name in ("scipy-openblas", "system") if choice == "auto" else (choice,):
        why_not = _load_wheel() if name == "scipy-openblas" else _load_system()
        if why_not is None:
            forced = f"chosen by {ENV}={choice}" if choice != "auto" else None
            _state["why"] = forced or (
                "first choice (the scipy-openblas32 wheel)"
                if not tried
                else f"fallback: {'; '.join(tried)}"
            )
            return True
        tried.append(f"{name}: {why_not}")
    if choice != "auto":
        return _fail(f"{ENV}={choice}: {tried[0].split(': ', 1)[1]}")
    _state["reason"] = "; ".join(tried)
    warnings.warn(
        f"mlx_mixlora: no OpenBLAS ({_state['reason']}); MLX CPU matmuls use the slow "
        f"reference BLAS. Fix: {INSTALL_HINT}",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def _fail(message: str) -> bool:
    global _error
    _error = message
    _state["reason"] = f"error: {message}"
    if Path(sys.argv[0] if sys.argv else "").name != "mixlora":
        warnings.warn(f"mlx_mixlora: {message}", RuntimeWarning, stacklevel=4)
    return False


def _load_wheel() -> str | None:
    """Load scipy-openblas32 privately and the shim in front of it; None on success, else why not."""
    path = _wheel_path()
    if path is None:
        return f"the {WHEEL} wheel is not installed (pip install {WHEEL})"
    try:
        handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
    except OSError as e:
        return f"{path.name} did not load ({e})"
    if not install_gemv_shim(handle, prefix=WHEEL_PREFIX, forward_only=True):
        return f"its forwarding shim is unavailable: {shim_status()['reason']}"
    _loaded("scipy-openblas", handle, WHEEL_PREFIX, str(path), "OpenBLAS")
    return None


def _wheel_path() -> Path | None:
    override = os.environ.get("MIXLORA_SCIPY_OPENBLAS_LIB")  # tests: a wheel that is "missing"
    if override is not None:
        return Path(override) if override and Path(override).is_file() else None
    return wheel_library()


def _load_system() -> str | None:
    """Load the system libopenblas globally (shim first); None on success, else why not."""
    soname = os.environ.get("MIXLORA_OPENBLAS_LIB", OPENBLAS_SONAME)
    coretype = None if "OPENBLAS_CORETYPE" in os.environ else coretype_for(_read_cpuinfo())
    if coretype:  # read once, by OpenBLAS's load-time constructor; not left for child processes
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        handle = ctypes.CDLL(soname, mode=ctypes.RTLD_LOCAL)
    except OSError:
        return f"{soname} not found"
    finally:
        if coretype:
            del os.environ["OPENBLAS_CORETYPE"]
    install_gemv_shim(handle)  # its cblas_sgemm must enter the global scope before OpenBLAS's
    ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)  # now MLX's cblas_* (and LAPACK) resolve here
    chosen = "mlx_mixlora (AMD CPU with AVX-512)" if coretype else None
    _loaded("system", handle, "", _library_path("libopenblas") or soname, chosen)
    return None


def _loaded(name: str, handle: ctypes.CDLL, prefix: str, path: str, chosen: str | None) -> None:
    global _handle, _prefix
    _handle, _prefix = handle, prefix
    _state["core"] = _call_str("openblas_get_corename")
    if chosen and chosen != "OpenBLAS":
        _state["core_chosen_by"] = chosen
    elif "OPENBLAS_CORETYPE" in os.environ:
        _state["core_chosen_by"] = "OPENBLAS_CORETYPE"
    else:
        _state["core_chosen_by"] = "OpenBLAS"
    config = _call_str("openblas_get_config") or ""
    version = config.split()[1] if config.startswith("OpenBLAS ") else None
    _state.update(loaded=True, name=name, path=path, reason="loaded", version=version)


def _call_str(symbol: str) -> str | None:
    try:
        fn = getattr(_handle, _prefix + symbol)
    except AttributeError:
        return None
    fn.restype = ctypes.c_char_p
    value = fn()
    return value.decode() if value else None


def _library_path(fragment: str) -> str | None:
    """Resolve the on-disk path of a loaded library via /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if fragment in path and ".so" in path:
                    return path
    except OSError:
        return None
    return None


def get_num_threads() -> int | None:
    """OpenBLAS's thread count (None when no OpenBLAS is loaded)."""
    if _handle is None:
        return None
    return int(getattr(_handle, _prefix + "openblas_get_num_threads")())


def set_num_threads(n: int) -> None:
    """Set OpenBLAS's thread count (no-op when no OpenBLAS is loaded)."""
    if _handle is not None:
        getattr(_handle, _prefix + "openblas_set_num_threads")(int(n))


def blas_status() -> dict[str, object]:
    """What BLAS this process uses, for `mixlora doctor` and benchmark records."""
    return {**_state, "requested": requested(), "error": _error}
