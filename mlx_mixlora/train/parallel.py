"""Split each batch across MLX CPU streams so single-threaded CPU ops use every core.

Halves of the batch run on two streams, each with single-threaded BLAS (why:
`cpu.streams`). `mx.compile`
cannot trace one function over two streams, so each stream gets its own
compiled value-and-grad of the loss (traced on that stream); the gradients are
combined, weighted by target counts, outside.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map


class SplitStep:
    """value-and-grad of `loss_fn(model, *arrays)` over several streams, each compiled once."""

    def __init__(self, model: nn.Module, loss_fn, n_streams: int):
        self.model = model
        self.streams = [mx.new_stream(mx.cpu) for _ in range(n_streams)]
        self.fns = []
        for _ in self.streams:

            def half(params, *arrays):
                model.update(params)
                return loss_fn(model, *arrays)

            self.fns.append(mx.compile(mx.value_and_grad(partial(half))))

    def __call__(self, parts: list[tuple]) -> tuple[mx.array, mx.array, dict]:
        """Mean loss, target count and mean-loss gradient over all `parts` (one per stream)."""
        params = self.model.trainable_parameters()
        outs = []
        for fn, stream, arrays in zip(self.fns, self.streams, parts, strict=False):
            with mx.stream(stream):
                outs.append(fn(params, *arrays))
        self.model.update(params)  # tracing left placeholders in the model
        n = sum(o[0][1] for o in outs)
        loss = sum(o[0][0] * o[0][1] for o in outs) / n
        grads = _tree_weighted([o[1] for o in outs], [o[0][1] / n for o in outs])
        return loss, n, grads


def _tree_weighted(trees: list, weights: list):
    out = tree_map(lambda g: g * weights[0], trees[0])
    for t, w in zip(trees[1:], weights[1:], strict=True):
        out = tree_map(lambda a, g, w=w: a + g * w, out, t)
    return out
