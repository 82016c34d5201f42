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

CHUNK_ELEMENTS = 1 << 22  # a [rows, V] block of logits: 16 MB in fp32


def row_blocks(rows: int, cols: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most CHUNK_ELEMENTS elements each (at least one row)."""
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


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


def head_logsumexp(w: mx.array):
    """logsumexp over the vocab of h·Wᵀ for a frozen head `w` [V, D], one row block at a time.

    Neither the [T, V] logits nor their gradient exist as one array, and the
    logits are not kept for the backward pass (a custom function keeps its
    inputs: here h, not the logits): each block's softmax becomes its [rows, D]
    share of the gradient of h, and only the blocks' exp(x - max) stay between
    the passes, as `logsumexp_keep` keeps them. On the bench's 32000-vocab step
    this lowered the peak from 1.79 to 1.61 GiB. The values are the whole-array
    path's (one block, as on the nano base: bit for bit; several: the row-blocked
    GEMMs may round differently). `w` is a constant: no gradient flows into the head.
    """

    @mx.custom_function
    def lse_of(h: mx.array):
        lse, sums, blocks = [], [], []
        exp = fastmath.exp if fastmath.use_cpu_math() else mx.exp
        for a, b in row_blocks(h.shape[0], w.shape[0]):
            x = (h[a:b] @ w.T).astype(mx.float32)
            m = mx.stop_gradient(x.max(axis=-1, keepdims=True))
            e = exp(x - m)
            s = e.sum(axis=-1, keepdims=True)
            lse.append((m + mx.log(s)).squeeze(-1))
            sums.append(s)
            blocks.append(e)
        return (mx.concatenate(lse), mx.concatenate(sums), *blocks)

    @lse_of.vjp
    def _vjp(primals, cotangents, outputs):
        h = primals[0] if isinstance(primals, (list, tuple)) else primals
        cot = cotangents[0][:, None] / outputs[1]
        blocks = row_blocks(h.shape[0], w.shape[0])
        parts = [
            ((cot[a:b] * e).astype(w.dtype) @ w).astype(h.dtype)
            for (a, b), e in zip(blocks, outputs[2:], strict=True)
        ]
        return (parts[0] if len(parts) == 1 else mx.concatenate(parts),)

    return lse_of


def cross_entropy_rows(model: nn.Module, h: mx.array, labels: mx.array) -> mx.array:
    """Per-row CE of the LM head on hidden rows h [T, D] against labels [T]."""
    w = _head_weight(model)
    if w is None:  # a quantized or biased head: the whole logits, then the blocked logsumexp
        logits = lm_head(model, h).astype(mx.float32)
        lse = logsumexp_keep(logits)[0]
        picked = mx.take_along_axis(logits, labels[:, None], axis=-1).squeeze(-1)
        return lse - picked
    lse = head_logsumexp(w)(h)[0]
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
