"""Parity with PEFT's `add_weighted_adapter` where it computes the same math.

The same A/B numbers are loaded into a PEFT model (tiny random LlamaForCausalLM)
and into our format; each combination type's ΔW = scaling·B·A is compared.
PEFT's DARE draws masks with torch's RNG, so for "same seed" parity both sides are
fed the same keep-masks: PEFT's `random_pruning` is patched to return them in the
order PEFT asks (module order, then adapter order; A's before B's in factor space).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers_merge import assert_close, np_mask

from mlx_mixlora.adapter_format import Adapter, AdapterConfig
from mlx_mixlora.merge import merge_adapters

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
merge_utils = pytest.importorskip("peft.utils.merge_utils")

NAMES = ["t1", "t2", "t3"]
PREFIX = "base_model.model."


def _peft_model(rank=4, alphas=(8.0, 4.0, 16.0), targets=("q_proj", "v_proj")):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    base = LlamaForCausalLM(cfg)
    model = None
    for name, alpha in zip(NAMES, alphas, strict=True):
        lc = peft.LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False
        )
        if model is None:
            model = peft.get_peft_model(base, lc, adapter_name=name)
        else:
            model.add_adapter(name, lc)
    ours = []
    for name, alpha in zip(NAMES, alphas, strict=True):
        w = {}
        for mod_name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and name in mod.lora_A:
                path = mod_name[len(PREFIX) :]
                w[f"{path}.lora_a"] = mx.array(mod.lora_A[name].weight.detach().numpy())
                w[f"{path}.lora_b"] = mx.array(mod.lora_B[name].weight.detach().numpy())
        cfg_ours = AdapterConfig(
            rank=rank, alpha=alpha, targets=list(targets), layers=[0, 1], name=name
        )
        ours.append(Adapter(cfg_ours, w, name))
    return model, ours


def _peft_deltas(model, adapter):
    out = {}
    for mod_name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and adapter in mod.lora_A:
            out[mod_name[len(PREFIX) :]] = mod.get_delta_weight(adapter).detach().numpy()
    return out


class _FixedMasks:
    """Stand-in for PEFT's random_pruning that hands out our masks in PEFT's call order."""

    def __init__(self, order):
        self.order = list(order)

    def __call__(self, tensor, density, rescale):
        key, i = self.order.pop(0)
        mask = torch.from_numpy(np_mask(key, i, tuple(tensor.shape)).astype(np.float32))
        out = tensor * mask
        return out / density if rescale else out


def _mask_fn(key, i, shape):
    return mx.array(np_mask(key, i, shape))


WS = [0.7, -0.4, 1.3]


@pytest.fixture(scope="module")
def setup():
    return _peft_model()


def test_cat_matches(setup):
    model, ours = setup
    model.add_weighted_adapter(NAMES, WS, "m_cat", combination_type="cat")
    res = merge_adapters(ours, "cat", weights=WS)
    for p, d in _peft_deltas(model, "m_cat").items():
        assert_close(res.delta(p), d)
        mod = model.get_submodule(PREFIX + p)
        assert_close(res.weights[f"{p}.lora_a"], mod.lora_A["m_cat"].weight.detach().numpy())


def test_svd_matches(setup):
    model, ours = setup
    model.add_weighted_adapter(NAMES, WS, "m_svd", combination_type="svd", svd_rank=5)
    res = merge_adapters(ours, "svd", weights=WS, rank=5)
    for p, d in _peft_deltas(model, "m_svd").items():
        assert_close(res.delta(p), d, tol=1e-4)


def _truncate(d, r):
    u, s, vt = np.linalg.svd(np.asarray(d, np.float64))
    return (u[:, :r] * s[:r]) @ vt[:r]


@pytest.mark.parametrize(
    "ct,method,kw",
    [
        ("ties_svd", "ties", {"density": 0.3}),
        ("magnitude_prune_svd", "magnitude_prune", {"density": 0.5}),
        ("dare_ties_svd", "dare_ties", {"drop": 0.4}),
        ("dare_linear_svd", "dare_linear", {"drop": 0.4}),
    ],
)
def test_dense_svd_types_match(setup, monkeypatch, ct, method, kw):
    model, ours = setup
    density = kw.get("density", 1 - kw.get("drop", 0.0))
    paths = list(_peft_deltas(model, "t1"))
    masks = _FixedMasks((p, i) for p in paths for i in range(3))
    monkeypatch.setattr(merge_utils, "random_pruning", masks)
    name = f"m_{ct}"
    model.add_weighted_adapter(NAMES, WS, name, combination_type=ct, svd_rank=6, density=density)
    dense = merge_adapters(ours, method, weights=WS, mask_fn=_mask_fn, output="deltas", **kw)
    low = merge_adapters(ours, method, weights=WS, mask_fn=_mask_fn, rank=6, oversample=64, **kw)
    assert not masks.order or "dare" not in ct  # PEFT used exactly our masks
    for p, d in _peft_deltas(model, name).items():
        assert_close(_truncate(dense.deltas[p], 6), d, tol=1e-4)
        assert_close(low.delta(p), d, tol=1e-4)


@pytest.mark.parametrize(
    "ct,kw",
    [
        ("linear", {}),
        ("ties", {"density": 0.5}),
        ("magnitude_prune", {"density": 0.5}),
        ("dare_linear", {"drop": 0.4}),
        ("dare_ties", {"drop": 0.4}),
    ],
)
def test_factor_space_types_match(setup, monkeypatch, ct, kw):
    model, ours = setup
    density = kw.get("density", 1 - kw.get("drop", 0.0))
    paths = list(_peft_deltas(model, "t1"))
    order = [(f"{p}{s}", i) for p in paths for s in (".lora_a", ".lora_b") for i in range(3)]
    masks = _FixedMasks(order)
    monkeypatch.setattr(merge_utils, "random_pruning", masks)
    name = f"m_f_{ct}"
    model.add_weighted_adapter(NAMES, WS, name, combination_type=ct, density=density)
    assert not masks.order or "dare" not in ct
    res = merge_adapters(ours, f"factor_{ct}", weights=WS, mask_fn=_mask_fn, **kw)
    for p, d in _peft_deltas(model, name).items():
        assert_close(res.delta(p), d)
