"""The machine record every result file carries: OS, chip, devices, BLAS, versions, command, load.

Nothing here imports torch: its version comes from package metadata, its device
is recorded by the torch worker itself.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shlex
import subprocess
import sys
import time

from ..cpu import system

PACKAGES = ("mlx", "mlx-lm", "mlx-mixlora", "numpy", "torch", "transformers", "peft", "safetensors")


def chip() -> str:
    """CPU/SoC name: sysctl on macOS (e.g. 'Apple M1'), /proc/cpuinfo on Linux."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def command_line() -> str:
    """The exact command that made the file (program name without its install path)."""
    argv = list(sys.argv)
    if argv:
        argv[0] = os.path.basename(argv[0])
    return shlex.join(argv)


def machine_record(gemm: bool = True) -> dict:
    """Where and how a benchmark ran; `gemm` adds a measured fp32 GEMM rate on MLX's device."""
    rec = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "chip": chip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "memory_gb": memory_gb(),
        "mlx_device": system.device_name(),
        "blas": system.blas_in_use(),
        "heap": system.heap_in_use() + "; peers run with the default",
        "versions": versions(),
        "command": command_line(),
        "load_average": load_average(),
    }
    if gemm:
        rec["gemm_fp32_gflops"] = round(system.gemm_gflops(512, repeats=5), 1)
    return rec
