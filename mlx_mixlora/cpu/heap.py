"""Keep large freed buffers in glibc's heap on Linux, so MLX reuses them without page faults.

MLX's CPU allocator hands buffers it does not cache (every large one: logits,
their gradients, a fused weight) back to `free`. glibc serves allocations over
its mmap threshold (at most 32 MiB) with fresh `mmap`s, so each such buffer is
paged in again on first touch, one fault per 4 KiB page. On a virtual machine
that dominates: a 131 MB elementwise op measured 58 ms, and 6.9 ms once those
buffers come from the heap. Raising the mmap threshold and the trim threshold
(`mallopt`) keeps them there; the cost is that freed memory stays in the process
for reuse instead of going back to the OS.

That holds for the main arena only. A thread's allocations go to an arena of its
own, whose heaps are at most 64 MiB, so a large buffer made on a worker thread
(`cpu.streams`: merges and training run two) is a fresh `mmap` again, unmapped
when freed. One arena for every thread (`M_ARENA_MAX`) keeps those in the heap
too: a warm TIES merge of three rank-8 adapters on a 4-layer TinyLlama shape
faulted 87k pages a call on two streams and 25 with one arena (0.68 against
0.55 s). Small allocations still come from per-thread caches (tcache) without
the arena's lock. Set MIXLORA_NO_MALLOC_TUNING=1 to skip all of it.
This module must not import mlx.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 1  # every thread allocates from the main heap
MMAP_THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: keep up to ~2 GiB of free heap

_state: dict[str, object] = {"tuned": False, "reason": "not attempted"}


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds, one arena; once per process; True when in effect."""
    if _state["tuned"]:
        return True
    if not sys.platform.startswith("linux"):
        _state["reason"] = "not Linux"
        return False
    if os.environ.get("MIXLORA_NO_MALLOC_TUNING") == "1":
        _state["reason"] = "disabled by MIXLORA_NO_MALLOC_TUNING=1"
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _state["reason"] = "no glibc mallopt"
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if not (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        and mallopt(M_ARENA_MAX, ARENA_MAX)
    ):
        _state["reason"] = "mallopt refused the thresholds"
        return False
    _state.update(
        tuned=True, reason=f"mmap threshold {MMAP_THRESHOLD >> 20} MiB, {ARENA_MAX} arena"
    )
    return True


def malloc_status() -> dict[str, object]:
    """Whether the heap tuning is in effect, for `mixlora doctor` and benchmark records."""
    return dict(_state)
