"""Next tokens for a batch whose rows have their own temperature, top-p and seed.

Greedy rows (temperature 0) take the argmax of the whole batch in one op. A
sampling row draws from its own PRNG key (split once per token), so a request
with a `seed` gets the same tokens whichever other requests share its batch.
Top-p uses mlx-lm's `apply_top_p`, as `mixlora generate`'s sampler does.
"""

from __future__ import annotations

import secrets

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_p


class RowSampler:
    """One request's sampling state."""

    def __init__(self, temperature: float, top_p: float = 1.0, seed: int | None = None):
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = seed if seed is not None else secrets.randbits(63)
        self.key = None  # made on the model thread: MLX streams belong to threads

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def draw(self, logprobs: mx.array) -> mx.array:
        """One token id (scalar array) from log-probs [V]."""
        if self.key is None:
            self.key = mx.random.key(self.seed)
        self.key, sub = mx.random.split(self.key)
        if self.top_p < 1.0:
            logprobs = apply_top_p(logprobs[None], self.top_p)[0]
        return mx.random.categorical(logprobs * (1.0 / self.temperature), key=sub)


def sample_tokens(logits: mx.array, samplers: list[RowSampler]) -> mx.array:
    """Token ids [B] (lazy) for logits [B, V], row b drawn by samplers[b].

    Greedy rows need no softmax (the argmax of the logits is the argmax of the
    log-probs), and MLX's CPU exp is slow, so log-probs are made only for the
    rows that sample.
    """
    tokens = mx.argmax(logits, axis=-1)
    drawn = []
    for b, s in enumerate(samplers):
        if not s.greedy:
            row = logits[b]
            drawn.append((b, s.draw(row - mx.logsumexp(row, keepdims=True))))
    if drawn:
        rows = mx.array([b for b, _ in drawn])
        tokens[rows] = mx.stack([t for _, t in drawn]).astype(tokens.dtype)
    return tokens


def sample_rows(logits: mx.array, samplers: list[RowSampler]) -> list[int]:
    """`sample_tokens`, read to Python."""
    return sample_tokens(logits, samplers).tolist()
