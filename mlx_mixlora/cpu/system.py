"""Describe the machine MLX runs on: versions, device, BLAS and GEMM speed.

Used by `mixlora doctor` and recorded in every benchmark result file.
"""

from __future__ import annotations

import platform
import sys
from importlib.metadata import version

import mlx.core as mx

from .. import __version__
from .blas import INSTALL_HINT, blas_status
from .gemv_shim import shim_status
from .heap import malloc_status


def blas_in_use() -> str:
    """Name the BLAS behind MLX's CPU matmuls: which library, its kernels, the GEMV shim."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    status = blas_status()
    if status["loaded"]:
        version = f" {status['version']}" if status["version"] else ""
        core = (
            f", {status['core']} kernels chosen by {status['core_chosen_by']}"
            if status["core"]
            else ""
        )
        shim = shim_status()
        gemv = "GEMV shim on" if shim["active"] else f"GEMV shim off: {shim['reason']}"
        return f"OpenBLAS{version} [{status['name']}] ({status['path']}{core}; {gemv})"
    return "reference BLAS from the mlx wheel [reference]"


def blas_why() -> str:
    """Why that BLAS: first choice, forced by MIXLORA_BLAS, or what was missing."""
    if sys.platform == "darwin":
        return "macOS: MLX links Accelerate"
    status = blas_status()
    if status["loaded"]:
        return str(status["why"])
    reason = str(status["reason"])
    if reason.startswith("chosen by"):
        return reason
    return f"{reason}; fix: {INSTALL_HINT}"


def heap_in_use() -> str:
    """Whether large freed buffers stay in glibc's heap (see `heap`)."""
    status = malloc_status()
    return f"glibc, {status['reason']}" if status["tuned"] else f"default ({status['reason']})"


def gemm_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Measured fp32 n×n×n GEMM throughput on MLX's default device, warm-up excluded."""
    from ..bench.timing import repeat

    a = mx.random.normal((n, n), key=mx.random.key(0))
    b = mx.random.normal((n, n), key=mx.random.key(1))
    mx.eval(a, b)
    best = min(repeat(lambda: mx.eval(a @ b), repeats, warmup=2))
    return 2 * n**3 / best / 1e9


def gemv_gbs(rows: int = 5632, cols: int = 2048, repeats: int = 20) -> float:
    """Measured fp32 one-row product (a decode step's x @ W.T) in GB/s of W read, warm-up excluded."""
    from ..bench.timing import repeat

    w = mx.random.normal((rows, cols), key=mx.random.key(0))
    x = mx.random.normal((1, cols), key=mx.random.key(1))
    mx.eval(w, x)
    best = min(repeat(lambda: mx.eval(x @ w.T), repeats, warmup=2))
    return rows * cols * 4 / best / 1e9


def device_name() -> str:
    dev = mx.default_device()
    if mx.metal.is_available():
        return f"{dev} (Metal: {mx.metal.device_info().get('device_name', 'Apple GPU')})"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return f"{dev} (CUDA)"
    return f"{dev} (CPU backend)"


def system_report(gemm_size: int = 1024) -> dict:
    """Everything a benchmark or bug report needs to say where it ran."""
    return {
        "mlx_mixlora": __version__,
        "mlx": mx.__version__,
        "mlx_lm": version("mlx-lm"),  # importing mlx_lm would load transformers (and torch)
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "device": device_name(),
        "blas": blas_in_use(),
        "blas_why": blas_why(),
        "heap": heap_in_use(),
        "gemm_fp32_gflops": round(gemm_gflops(gemm_size), 1),
        "gemv_fp32_gb_s": round(gemv_gbs(), 1),
    }
