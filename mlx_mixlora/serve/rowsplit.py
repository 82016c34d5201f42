"""Small decode batches as one matrix-vector product per row (CPU).

A decode step of B rows multiplies a [B, in] activation by every weight. On the
CPU that is OpenBLAS's GEMM, which packs the whole weight and pads the rows to
its kernel's tile, so for B = 2..4 it costs more than B separate matrix-vector
products (`cpu.gemv_shim` sends one-row products to GEMV): the 32000 x 2048 LM
head took 76 / 88 ms as 2 / 4 GEMVs against 158 / 204 ms as one GEMM, a
5632 x 2048 MLP weight 7 / 15 ms against 17 / 22 ms (2-core EPYC, under load).
From about 8 rows on, GEMM is cheaper. So each plain Linear gets a wrapper that
splits an input of at most `max_rows` rows into single rows; a row's result is
then bit-identical to the same row decoded alone.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..modules import get_module, set_module

DEFAULT_MAX_ROWS = 4  # where per-row GEMV stopped winning (see above)


def default_max_rows() -> int:
    """Split on the CPU only: Metal's and CUDA's batched kernels have no such penalty."""
    return DEFAULT_MAX_ROWS if mx.default_device() == mx.cpu else 0


class RowSplitLinear(nn.Module):
    """A Linear that runs an input of 2..max_rows rows (all but the last axis) row by row."""

    def __init__(self, linear: nn.Linear, max_rows: int):
        super().__init__()
        self.linear = linear
        self.max_rows = max_rows
        self.freeze()

    def __call__(self, x: mx.array) -> mx.array:
        rows = x.size // x.shape[-1]
        if rows < 2 or rows > self.max_rows:
            return self.linear(x)
        flat = x.reshape(rows, 1, x.shape[-1])
        out = mx.concatenate([self.linear(flat[i]) for i in range(rows)], axis=0)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def attach_row_split(model: Any, max_rows: int) -> int:
    """Wrap every plain `nn.Linear` of `model` (adapter bases included); returns how many."""
    if max_rows < 2:
        return 0
    paths = [p for p, m in model.named_modules() if type(m) is nn.Linear]
    for p in paths:
        set_module(model, p, RowSplitLinear(get_module(model, p), max_rows))
    return len(paths)


def detach_row_split(model: Any) -> None:
    """Put the plain Linears back."""
    for p, m in [(p, m) for p, m in model.named_modules() if isinstance(m, RowSplitLinear)]:
        set_module(model, p, m.linear)
