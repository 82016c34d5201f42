"""Prompt features and the routing pass's KV-cache reuse."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers_route import random_adapter, tiny_model

import mlx_mixlora  # noqa: F401
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.lora import attach_lora, detach_lora
from mlx_mixlora.route import RoutedPrefill, prompt_features
from mlx_mixlora.route.embed import run_lower


def _h(model, toks, layer):
    return np.array(run_lower(model, mx.array([toks]), layer))[0]


def test_batched_features_equal_one_prompt_at_a_time():
    model = tiny_model(layers=3)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 90, size=n).tolist() for n in (3, 9, 5, 12, 1)]
    for layer in (0, 2, 3):
        batched = prompt_features(model, prompts, layer, batch_size=3)
        single = np.stack([_h(model, p, layer).mean(axis=0) for p in prompts])
        np.testing.assert_allclose(batched, single, atol=1e-5)


def test_layer_out_of_range_is_refused():
    model = tiny_model(layers=2)
    with pytest.raises(MixloraError, match="outside 0..2"):
        prompt_features(model, [[1, 2]], 3)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_continued_prefill_matches_full_forward_with_adapter(layer):
    """Routing pass (base, layers < L) + continuation (adapter, layers >= L) == full adapted forward."""
    model = tiny_model(layers=4)
    cfg, w = random_adapter(model, seed=1, layers=range(layer, 4))
    toks = np.random.default_rng(1).integers(3, 90, size=11).tolist()
    pre = RoutedPrefill(model, toks, layer)
    feat = pre.embed()
    np.testing.assert_allclose(feat, _h(model, toks, layer).mean(axis=0), atol=1e-6)
    attach_lora(model, cfg, w)
    full = model(mx.array([toks]))
    last = pre.continue_prefill()
    assert last.tolist() == toks[-1:]
    assert all(c.offset == len(toks) - 1 for c in pre.cache)
    step = model(last[None], cache=pre.cache)  # the generator's first step
    np.testing.assert_allclose(np.array(step[0, -1]), np.array(full[0, -1]), atol=1e-5)
    detach_lora(model)
    base_last = np.array(model(mx.array([toks]))[0, -1])
    assert np.abs(base_last - np.array(full[0, -1])).max() > 1e-3  # the adapter mattered


def test_prefill_of_one_token_prompt():
    model = tiny_model(layers=2)
    pre = RoutedPrefill(model, [5], 1)
    pre.embed()
    last = pre.continue_prefill()
    out = model(last[None], cache=pre.cache)
    np.testing.assert_allclose(np.array(out), np.array(model(mx.array([[5]]))), atol=1e-5)
