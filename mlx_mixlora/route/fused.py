"""Single-prompt execution: fuse the routed adapter(s) into the base, generate, restore.

The chosen adapters become one factor pair per module (`decision.decision_updates`),
fused with `fuse.fuse_deltas` (one `addmm` per weight). Decoding then runs at
base speed with mlx-lm's KV cache and sampler, and `restore` puts the original
weight arrays back, bit for bit. Many prompts: `generate_many` runs mixed-adapter
batches (`mixed.py`) or fuses once per distinct decision (`switch.AdapterSwitcher`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.generate import stream_generate

from ..adapter_format import Adapter
from ..fuse import fuse_deltas, restore
from .decision import Decision, decide, decision_updates
from .embed import FeatureRouter, RoutedPrefill, encode_prompts
from .mixed import attach_mixed, detach_mixed, mixed_generate
from .switch import fused_groups


@contextlib.contextmanager
def fused(model: Any, adapters: list[Adapter], decision: Decision) -> Iterator[None]:
    """Within the block the model computes with the decision's adapters fused in."""
    handle = fuse_deltas(model, decision_updates(adapters, decision)) if decision.indices else {}
    try:
        yield
    finally:
        restore(model, handle)


@dataclass
class RoutedGeneration:
    decision: Decision
    text: str
    tokens: list[int] = field(default_factory=list)
    reused_layers: int = 0


def generate_routed(
    model: Any,
    tokenizer: Any,
    adapters: list[Adapter],
    router: Any,
    prompt: str,
    mode: str = "top1",
    top_k: int = 2,
    threshold: float = 0.5,
    max_tokens: int = 32,
    sampler: Any = None,
    decision: Decision | None = None,
) -> RoutedGeneration:
    """Route one prompt, generate with the chosen adapter(s) fused in, restore the base.

    With a feature router whose layer L is at or below every adapter's lowest
    layer, the routing pass's KV cache for layers < L is reused by the prefill.
    """
    tokens = list(tokenizer.encode(prompt))
    prefill = None
    if decision is None:
        if isinstance(router, FeatureRouter):
            prefill = RoutedPrefill(model, tokens, router.layer, router.pool)
            probs = router.probs_from_features(prefill.embed()[None])
        else:
            probs = router.probs(model, [tokens])
        decision = decide(probs, mode, top_k=top_k, threshold=threshold)[0]
    lowest = min((min(adapters[i].config.layers) for i in decision.indices), default=10**9)
    reuse = prefill is not None and prefill.layer <= lowest
    kw: dict[str, Any] = {"max_tokens": max_tokens}
    if sampler is not None:
        kw["sampler"] = sampler
    with fused(model, adapters, decision):
        if reuse:
            last = prefill.continue_prefill()
            kw["prompt_cache"] = prefill.cache
            stream = stream_generate(model, tokenizer, last, **kw)
        else:
            stream = stream_generate(model, tokenizer, mx.array(tokens), **kw)
        out, text = [], []
        for r in stream:
            out.append(int(r.token))
            text.append(r.text)
    return RoutedGeneration(decision, "".join(text), out, prefill.layer if reuse else 0)


def generate_many(
    model: Any,
    tokenizer: Any,
    adapters: list[Adapter],
    router: Any,
    prompts: Sequence[str],
    mode: str = "top1",
    top_k: int = 2,
    threshold: float = 0.5,
    max_tokens: int = 32,
    sampler: Any = None,
    batch_size: int = 8,
) -> list[RoutedGeneration]:
    """Route all prompts in one batched pass, then generate.

    One adapter per prompt (top1 / threshold) and `batch_size` > 1: mixed-adapter
    batches (`mixed_generate`, one forward per step whatever the adapters).
    Otherwise (mixtures, or `batch_size` <= 1): fuse once per distinct decision
    (`AdapterSwitcher`) and generate that group's prompts one by one.
    """
    token_lists = encode_prompts(tokenizer, prompts)
    decisions = decide(router.probs(model, token_lists), mode, top_k=top_k, threshold=threshold)
    if batch_size > 1 and all(len(d.indices) <= 1 for d in decisions):
        return _generate_mixed(
            model, tokenizer, adapters, token_lists, decisions, max_tokens, sampler, batch_size
        )
    return _generate_grouped(
        model, tokenizer, adapters, token_lists, decisions, max_tokens, sampler
    )


def _generate_mixed(
    model, tokenizer, adapters, token_lists, decisions, max_tokens, sampler, batch_size
):
    eos = list(getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id])
    out: list[RoutedGeneration] = []
    attach_mixed(model, adapters)
    try:
        for s in range(0, len(token_lists), batch_size):
            idx = [d.top1 for d in decisions[s : s + batch_size]]
            toks = mixed_generate(
                model, token_lists[s : s + batch_size], idx, max_tokens, eos, sampler
            )
            out += [
                RoutedGeneration(d, tokenizer.decode(t), t)
                for d, t in zip(decisions[s : s + batch_size], toks, strict=True)
            ]
    finally:
        detach_mixed(model)
    return out


def _generate_grouped(model, tokenizer, adapters, token_lists, decisions, max_tokens, sampler):
    kw: dict[str, Any] = {"max_tokens": max_tokens}
    if sampler is not None:
        kw["sampler"] = sampler
    out: list[RoutedGeneration | None] = [None] * len(token_lists)
    for members in fused_groups(model, adapters, decisions):
        for i in members:
            toks, text = [], []
            for r in stream_generate(model, tokenizer, mx.array(token_lists[i]), **kw):
                toks.append(int(r.token))
                text.append(r.text)
            out[i] = RoutedGeneration(decisions[i], "".join(text), toks)
    return out  # type: ignore[return-value]
