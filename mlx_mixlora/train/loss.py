"""Next-token cross-entropy evaluated only at target rows.

The LM head is applied to the gathered target hidden states, so with a 32000
vocab and a prompt-masked batch the head's FLOPs and the [T, V] logits scale
with the answer tokens, not the whole sequence.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .forward import hidden_states, lm_head


def target_loss(
    model: nn.Module,
    tokens: mx.array,
    labels: mx.array,
    target_idx: mx.array | None,
    weights: mx.array,
    positions: mx.array | None = None,
    segments: mx.array | None = None,
    grad_checkpoint: bool = False,
) -> tuple[mx.array, mx.array]:
    """(mean CE over weighted targets, number of targets)."""
    h = hidden_states(model, tokens, positions, segments, grad_checkpoint)
    h = h.reshape(-1, h.shape[-1])
    if target_idx is not None:
        h = h[target_idx]
    logits = lm_head(model, h).astype(mx.float32)
    picked = mx.take_along_axis(logits, labels[:, None], axis=-1).squeeze(-1)
    ce = mx.logsumexp(logits, axis=-1) - picked
    n = weights.sum()
    return (ce * weights).sum() / n, n
