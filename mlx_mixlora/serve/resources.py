"""Memory figures for /health: what a soak run watches to see that nothing leaks."""

from __future__ import annotations

import os

import mlx.core as mx

from ..bench.timing import max_rss_gb


def rss_mb() -> float | None:
    """This process's current resident memory (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def memory_mb() -> dict:
    return {
        "rss_mb": rss_mb(),
        "peak_rss_mb": round(max_rss_gb() * 1024, 1),
        "mlx_active_mb": round(mx.get_active_memory() / 2**20, 1),
    }
