"""Arrow prototypes against a dense SVD, and Arrow routing on adapters with planted directions."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers_route import tiny_model

import mlx_mixlora  # noqa: F401
from mlx_mixlora.adapter_format import AdapterConfig, module_path
from mlx_mixlora.route import Adapter, ArrowRouter
from mlx_mixlora.route.arrow import top_right_singular


@pytest.mark.parametrize("shape", [(64, 4, 64), (128, 8, 64), (64, 1, 128), (96, 16, 48)])
def test_top_right_singular_vector_matches_dense_svd(shape):
    out_dims, r, in_dims = shape
    rng = np.random.default_rng(r)
    b = rng.normal(size=(out_dims, r)).astype(np.float32)
    a = rng.normal(size=(r, in_dims)).astype(np.float32)
    v, s1 = top_right_singular(mx.array(b), mx.array(a))
    _, s, vt = np.linalg.svd(b.astype(np.float64) @ a.astype(np.float64))
    v = np.array(v, dtype=np.float64)
    assert abs(np.linalg.norm(v) - 1) < 1e-5
    assert abs(abs(v @ vt[0]) - 1) < 1e-5  # same direction up to sign
    assert abs(s1 - s[0]) / s[0] < 1e-5


def _planted(model, direction: np.ndarray, i: int) -> Adapter:
    """Rank-2 adapter on layer 0 q/v whose top input direction is `direction`."""
    rng = np.random.default_rng(i)
    cfg = AdapterConfig(rank=2, alpha=2, targets=["q_proj", "v_proj"], layers=[0], name=f"a{i}")
    w = {}
    for t in cfg.targets:
        p = module_path(0, t)
        out_dims = model.model.layers[0].self_attn[t].weight.shape[0]
        a = np.stack([5 * direction, 0.1 * rng.normal(size=direction.shape)])
        w[f"{p}.lora_a"] = mx.array(a.astype(np.float32))
        w[f"{p}.lora_b"] = mx.array(rng.normal(size=(out_dims, 2)).astype(np.float32))
    return Adapter(cfg, w, f"a{i}", "", str(i))


def test_arrow_routes_to_adapter_aligned_with_prompt_inputs():
    """Inputs to layer-0 q/v are the normed embeddings: plant each adapter on one token's."""
    model = tiny_model(layers=2)
    emb = np.array(model.model.layers[0].input_layernorm(model.model.embed_tokens.weight))
    tok_ids = [10, 20, 30]
    dirs = [emb[t] / np.linalg.norm(emb[t]) for t in tok_ids]
    adapters = [_planted(model, d, i) for i, d in enumerate(dirs)]
    router = ArrowRouter(adapters)
    probs = router.probs(model, [[t] * 6 for t in tok_ids])
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2]
    # the probe is removed again
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear"
