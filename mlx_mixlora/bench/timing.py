"""Repeat-and-summarise timing: warm-up runs excluded, median with min/max and quartiles.

Speed figures are medians over several runs; the spread is reported with them
so a reader sees how noisy a shared machine was.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable


def stats(values: list[float]) -> dict:
    """Median, min, max and quartiles of the runs, plus the runs themselves."""
    if not values:
        raise ValueError("no runs to summarise")
    v = sorted(float(x) for x in values)
    q1, q3 = (v[0], v[-1]) if len(v) < 2 else _quartiles(v)
    return {
        "median": statistics.median(v),
        "min": v[0],
        "max": v[-1],
        "q1": q1,
        "q3": q3,
        "n": len(v),
        "runs": [float(x) for x in values],
    }


def _quartiles(v: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[2]


def repeat(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `fn` over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call: CPU time is steadier when other jobs share the cores."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def max_rss_gb() -> float:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def train_summary(step_tokens: list[int], step_seconds: list[float], step_cpu: list[float]) -> dict:
    """Throughput over all steps but the first (compile / warm-up); per CPU-second too."""
    tok, sec, cpu = sum(step_tokens[1:]), sum(step_seconds[1:]), sum(step_cpu[1:])
    return {
        "tokens_per_cpu_second": round(tok / cpu, 2) if cpu else None,
        "timed_cpu_seconds": round(cpu, 3),
        "steps": len(step_tokens),
        "timed_steps": len(step_tokens) - 1,
        "timed_tokens": tok,
        "timed_seconds": round(sec, 3),
        "tokens_per_second": round(tok / sec, 2) if sec else None,
        "first_step_seconds": round(step_seconds[0], 3),
        "step_tokens_per_second": [
            round(t / s, 2) for t, s in zip(step_tokens[1:], step_seconds[1:], strict=True) if s
        ],
    }
