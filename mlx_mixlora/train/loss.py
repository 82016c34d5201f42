"""Next-token cross-entropy evaluated only at target rows.

The LM head is applied to the gathered target hidden states, so with a 32000
vocab and a prompt-masked batch the head's FLOPs and the [T, V] logits scale
with the answer tokens, not the whole sequence.

MLX's CPU `exp` is slow and single-threaded, so the [T, V] part is written to
touch the logits as few times as possible: `logsumexp` keeps exp(x - max)
(`fastmath.exp` on the CPU) for its backward instead of recomputing it, and the
label logit is h·W[label] (a [T, D] gather) rather than a pick from the logits,
whose backward would be a [T, V] scatter.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..cpu import fastmath
from .forward import hidden_states, lm_head


@mx.custom_function
def logsumexp_keep(x: mx.array):
    """Row-wise logsumexp of [T, V]; also returns exp(x - max) and its row sums for the vjp."""
    m = mx.stop_gradient(x.max(axis=-1, keepdims=True))
    e = (fastmath.exp if fastmath.use_cpu_math() else mx.exp)(x - m)
    s = e.sum(axis=-1, keepdims=True)
    return (m + mx.log(s)).squeeze(-1), e, s


@logsumexp_keep.vjp
def _logsumexp_keep_vjp(primals, cotangents, outputs):
    _, e, s = outputs
    return ((cotangents[0][:, None] / s) * e,)


def _head_weight(model: nn.Module) -> mx.array | None:
    """The [V, D] output matrix when it is a plain (unquantized, bias-free) weight."""
    if getattr(model.args, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        head = model.model.embed_tokens
        return head.weight if type(head) is nn.Embedding else None
    head = model.lm_head
    if type(head) is nn.Linear and "bias" not in head:
        return head.weight
    return None


def cross_entropy_rows(model: nn.Module, h: mx.array, labels: mx.array) -> mx.array:
    """Per-row CE of the LM head on hidden rows h [T, D] against labels [T]."""
    logits = lm_head(model, h).astype(mx.float32)
    lse = logsumexp_keep(logits)[0]
    w = _head_weight(model)
    if w is None:
        picked = mx.take_along_axis(logits, labels[:, None], axis=-1).squeeze(-1)
    else:
        picked = (h.astype(mx.float32) * w[labels].astype(mx.float32)).sum(axis=-1)
    return lse - picked


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
    ce = cross_entropy_rows(model, h, labels)
    n = weights.sum()
    return (ce * weights).sum() / n, n
