"""Prompt embeddings from the frozen base, with the prefill's KV cache kept for reuse.

The routing feature pools the hidden state after the first `layer` decoder
layers (`layer=0`: the token embeddings) over the prompt's real tokens:
``mean`` (average of every position) or ``last`` (the final position, which
attends to the whole prompt once `layer` >= 1). Layers below
`layer` see no adapter when every adapter sits at layers >= `layer`, so their
KV cache from the routing pass *is* the adapted model's cache: the prefill
continues from layer `layer` with the chosen adapter and routing costs no
second pass over the lower layers. `feature_layer`/`feature_pool` give the
defaults every feature router and gate uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import make_prompt_cache

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..modules import n_layers

POOLS = ("mean", "last")
DEFAULT_POOL = "mean"


def _inner(model: Any) -> Any:
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "embed_tokens"):
        raise MixloraError("routing needs an mlx-lm decoder model (model.model.layers)")
    return inner


def check_layer(model: Any, layer: int) -> int:
    n = n_layers(model)
    if not 0 <= int(layer) <= n:
        raise MixloraError(f"embedding layer {layer} is outside 0..{n} (the model has {n} layers)")
    return int(layer)


def run_lower(model: Any, tokens: mx.array, layer: int, cache: list | None = None) -> mx.array:
    """Hidden states [B, T, D] after decoder layers 0..layer-1 (filling `cache[:layer]`)."""
    inner = _inner(model)
    h = inner.embed_tokens(tokens)
    for i in range(layer):
        c = cache[i] if cache is not None else None
        h = inner.layers[i](h, create_attention_mask(h, c), cache=c)
    return h


def run_upper(
    model: Any, h: mx.array, layer: int, cache: list | None = None, logits: bool = True
) -> mx.array:
    """Logits (or final hidden states) from states entering decoder layer `layer`."""
    inner = _inner(model)
    for i in range(layer, len(inner.layers)):
        c = cache[i] if cache is not None else None
        h = inner.layers[i](h, create_attention_mask(h, c), cache=c)
    if not logits:
        return h
    h = inner.norm(h)
    if getattr(model.args, "tie_word_embeddings", False):
        return inner.embed_tokens.as_linear(h)
    return model.lm_head(h)


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise MixloraError(f"unknown feature pooling {pool!r}; use {', '.join(POOLS)}")
    return pool


def feature_layer(model: Any, adapters: list[Adapter], layer: int | None = None) -> int:
    """The embedding layer: `layer` if given, else the lowest adapted layer capped at n/2.

    At or below every adapter's lowest layer the routing pass's KV cache is reused.
    """
    if layer is None:
        layer = min(min(a.config.layers) for a in adapters)
        layer = min(layer, n_layers(model) // 2)
    return check_layer(model, layer)


def feature_pool(pool: str | None = None) -> str:
    """The feature pooling: `pool` if given, else `DEFAULT_POOL`."""
    return check_pool(pool or DEFAULT_POOL)


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    out = [list(tokenizer.encode(p)) for p in prompts]
    if any(len(t) == 0 for t in out):
        raise MixloraError("a prompt encodes to no tokens")
    return out


def mean_pool(h: mx.array, lengths: Sequence[int]) -> mx.array:
    """Mean over the first `lengths[b]` positions of each row (right padding masked out)."""
    t = h.shape[1]
    mask = (mx.arange(t)[None, :] < mx.array(list(lengths))[:, None]).astype(mx.float32)
    s = (h.astype(mx.float32) * mask[..., None]).sum(axis=1)
    return s / mask.sum(axis=1, keepdims=True)


def pool_states(h: mx.array, lengths: Sequence[int], pool: str = "mean") -> mx.array:
    """[B, D] features of right-padded states [B, T, D] with `lengths[b]` real tokens."""
    if check_pool(pool) == "mean":
        return mean_pool(h, lengths)
    last = mx.array([n - 1 for n in lengths])
    return h[mx.arange(h.shape[0]), last].astype(mx.float32)


def prompt_features(
    model: Any,
    token_lists: Sequence[Sequence[int]],
    layer: int,
    batch_size: int = 16,
    pool: str = "mean",
) -> np.ndarray:
    """Pooled layer-`layer` features [N, D] for many prompts, batched with right padding.

    Causal attention means padding after a prompt never changes its real
    tokens' states, so batching gives the same features as one prompt at a time.
    """
    check_layer(model, layer)
    check_pool(pool)
    if any(len(t) == 0 for t in token_lists):
        raise MixloraError("cannot embed an empty prompt")
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    out = np.zeros((len(token_lists), model.args.hidden_size), dtype=np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        lens = [len(token_lists[i]) for i in idx]
        t = max(lens)
        batch = mx.array([list(token_lists[i]) + [0] * (t - len(token_lists[i])) for i in idx])
        f = pool_states(run_lower(model, batch, layer), lens, pool)
        out[idx] = np.array(f)
    return out


class FeatureRouter:
    """A router on pooled layer-`layer` prompt features (supports KV-cache reuse)."""

    layer: int
    n_adapters: int
    pool: str = DEFAULT_POOL

    def probs_from_features(self, feats: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def probs(self, model: Any, token_lists: Sequence[Sequence[int]], labels=None) -> np.ndarray:
        return self.probs_from_features(
            prompt_features(model, token_lists, self.layer, pool=self.pool)
        )


class RoutedPrefill:
    """One prompt's routing pass whose KV cache the generation then continues.

    `embed()` runs layers < `layer` over the whole prompt and returns the pooled
    feature. After the adapter is chosen (and fused or attached),
    `continue_prefill()` runs layers >= `layer` over all but the last token from
    the kept hidden states, and trims the lower caches to match, so mlx-lm's
    generator receives only the last token and a cache holding the rest.
    """

    def __init__(self, model: Any, tokens: Sequence[int], layer: int, pool: str = "mean"):
        if len(tokens) == 0:
            raise MixloraError("cannot route an empty prompt")
        self.model = model
        self.tokens = list(tokens)
        self.layer = check_layer(model, layer)
        self.pool = check_pool(pool)
        self.cache = make_prompt_cache(model)
        self._h: mx.array | None = None

    def embed(self) -> np.ndarray:
        h = run_lower(self.model, mx.array([self.tokens]), self.layer, self.cache)
        f = pool_states(h, [len(self.tokens)], self.pool)
        mx.eval(h, f, [c.state for c in self.cache[: self.layer]])
        self._h = h
        return np.array(f[0])

    def continue_prefill(self) -> mx.array:
        """Finish the prefill of tokens[:-1]; returns the last token to hand to the generator."""
        if self._h is None:
            raise MixloraError("continue_prefill() needs embed() first")
        for c in self.cache[: self.layer]:
            c.trim(1)
        if len(self.tokens) > 1:
            run_upper(self.model, self._h[:, :-1], self.layer, self.cache, logits=False)
            mx.eval([c.state for c in self.cache])
        self._h = None
        return mx.array(self.tokens[-1:])
