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
own, whose heaps are at most 64 MiB and are given back when free, so a large
buffer made on a worker thread (`cpu.streams`) is paged in again each time.
`one_arena` puts every thread on the main heap (`M_ARENA_MAX`) for a process that
makes few, large buffers on worker threads, as a merge does: a warm TIES merge of
three rank-8 adapters on a 4-layer TinyLlama shape faulted 87k pages a call on two
streams and 25 with one arena (0.68 against 0.55 s). It is not the default: where
two threads make many small buffers, the one arena's lock costs more than the
faults save (scoring the demo's 400 test prompts on two streams, 2.7 against
3.3 s). Set MIXLORA_NO_MALLOC_TUNING=1 to skip all of it.
This module must not import mlx.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: keep up to ~2 GiB of free heap

_state: dict[str, object] = {"tuned": False, "reason": "not attempted"}


def _mallopt():
    """glibc's `mallopt(param, value)`, or None where there is none."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when in effect."""
    if _state["tuned"]:
        return True
    if not sys.platform.startswith("linux"):
        _state["reason"] = "not Linux"
        return False
    if os.environ.get("MIXLORA_NO_MALLOC_TUNING") == "1":
        _state["reason"] = "disabled by MIXLORA_NO_MALLOC_TUNING=1"
        return False
    mallopt = _mallopt()
    if mallopt is None:
        _state["reason"] = "no glibc mallopt"
        return False
    if not (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ):
        _state["reason"] = "mallopt refused the thresholds"
        return False
    _state.update(tuned=True, reason=f"mmap threshold {MMAP_THRESHOLD >> 20} MiB")
    return True


def one_arena() -> bool:
    """From now on every new thread allocates from the main heap; True when in effect.

    For the rest of the process (glibc fixes its arena limit when it first needs a
    second arena): call it before the worker threads start, in a process whose
    threaded work is a few large buffers (`mixlora merge`), not decoding or serving.
    Only where the heap tuning is in effect (it is what keeps freed buffers there).
    """
    if _state["tuned"] and not _state.get("one_arena"):
        _state["one_arena"] = bool(_mallopt()(M_ARENA_MAX, 1))
    return bool(_state.get("one_arena"))


def malloc_status() -> dict[str, object]:
    """Whether the heap tuning is in effect, for `mixlora doctor` and benchmark records."""
    return dict(_state)
