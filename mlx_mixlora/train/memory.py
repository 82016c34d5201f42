"""How far MLX may queue a training step ahead of the CPU: the step's peak memory.

MLX's CPU backend allocates an op's output when it queues the op, not when the
op runs, and the queue runs far ahead of the worker streams; so a step's
temporaries (above all the exp's intermediates over [rows, vocab] logit blocks)
are allocated long before the ops that free them have run. With a memory limit
set, MLX's evaluation stops queueing while the limit is exceeded and waits for
queued work. `QueueBound` uses that: the first step (it also compiles) runs with
the limit at the memory held at rest, so it queues almost nothing ahead and its
peak is close to what the step really needs at once; every later step gets that
peak as its limit, so it queues freely until memory approaches it. The limit
is restored when training ends. Measured on MLX's CPU backend only; elsewhere,
or with MIXLORA_NO_QUEUE_BOUND=1, nothing is set.
"""

from __future__ import annotations

import os

import mlx.core as mx

ENV_OFF = "MIXLORA_NO_QUEUE_BOUND"


def enabled() -> bool:
    return mx.default_device() == mx.cpu and os.environ.get(ENV_OFF) != "1"


class QueueBound:
    """Set the limit at rest now, `settle()` after the first step, `close()` at the end."""

    def __init__(self) -> None:
        self.previous: int | None = None
        if enabled():
            self.previous = mx.set_memory_limit(max(mx.get_active_memory(), 1))

    def settle(self) -> None:
        if self.previous is not None:
            mx.set_memory_limit(max(mx.get_peak_memory(), 1))

    def close(self) -> None:
        if self.previous is not None:
            mx.set_memory_limit(self.previous)
            self.previous = None
