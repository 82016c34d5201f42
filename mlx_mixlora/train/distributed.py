"""Data-parallel training on MLX's own distributed engine (`mx.distributed`).

Launched as `mlx.launch --backend ring -n 2 -- mixlora train ...` (or with a
hostfile across several Macs). `--batch-size` stays the *global* batch: each
rank takes a contiguous shard of every batch's rows, gradients are combined
weighted by each rank's target count (so the result equals one process on the
combined batch), and only rank 0 writes checkpoints and the adapter.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import MixloraError


def world():
    """The distributed group when launched with several ranks, else None."""
    if not mx.distributed.is_available():
        return None
    group = mx.distributed.init()
    return group if group.size() > 1 else None


def check_batch(batch_size: int, group) -> None:
    if batch_size % group.size():
        raise MixloraError(
            f"--batch-size {batch_size} must be divisible by the number of ranks ({group.size()}); "
            "it is the global batch that the ranks share"
        )


def shard_rows(rows: list, group) -> list:
    """This rank's contiguous share of a global batch's rows."""
    size, rank = group.size(), group.rank()
    per = len(rows) // size
    if per == 0:
        raise MixloraError(f"a batch of {len(rows)} rows cannot be shared by {size} ranks")
    return rows[rank * per : (rank + 1) * per] if rank < size - 1 else rows[rank * per :]


def all_reduce(
    loss: mx.array, ntok: mx.array, grad: dict, group
) -> tuple[mx.array, mx.array, dict]:
    """Global mean loss, target count and mean-loss gradient from every rank's local ones.

    One collective for all gradients: they are flattened into a single vector,
    scaled by the local target count, summed over ranks and divided by the
    global count.
    """
    flat = tree_flatten(grad)
    ntok_f = ntok.astype(mx.float32)
    packed = mx.concatenate(
        [g.reshape(-1) * ntok_f for _, g in flat] + [(loss * ntok_f).reshape(1), ntok_f.reshape(1)]
    )
    total = mx.distributed.all_sum(packed, group=group)
    n = total[-1]
    out, offset = [], 0
    for name, g in flat:
        out.append((name, (total[offset : offset + g.size] / n).reshape(g.shape)))
        offset += g.size
    return total[-2] / n, n, tree_unflatten(out)
