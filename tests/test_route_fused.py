"""Fused single-prompt execution: same outputs as the unfused adapter, exact restore."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers_route import params, save_model_dir, save_random_adapters, tiny_model
from helpers_train import tiny_model as train_tiny_model
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_tokenizer

import mlx_mixlora  # noqa: F401
from mlx_mixlora.adapter_format import AdapterConfig
from mlx_mixlora.lora import attach_lora, detach_lora
from mlx_mixlora.modules import get_module, linear_at
from mlx_mixlora.route import (
    Adapter,
    AdapterSwitcher,
    Decision,
    UniformRouter,
    fused,
    generate_routed,
    load_adapters,
)
from mlx_mixlora.route.decision import decision_updates
from mlx_mixlora.route.embed import FeatureRouter
from mlx_mixlora.route.switch import fused_groups


class _Fixed(FeatureRouter):
    """A feature router that always picks one adapter (isolates execution from routing)."""

    name = "fixed"

    def __init__(self, choice, n, layer):
        self.choice, self.n_adapters, self.layer = choice, n, layer

    def probs_from_features(self, feats):
        p = np.full((len(feats), self.n_adapters), 0.1 / max(self.n_adapters - 1, 1))
        p[:, self.choice] = 0.9
        return p


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(save_model_dir(tmp_path_factory.mktemp("m"), tiny_model()))


def _adapters(tmp_path, model, **kw):
    return load_adapters(save_random_adapters(tmp_path, model, n=3, **kw))


def test_fused_logits_equal_unfused_lora_and_restore_is_bit_exact(tmp_path):
    model = tiny_model(layers=3)
    ads = _adapters(tmp_path, model, layers=(1, 2))
    before = params(model)
    toks = mx.array([[1, 5, 9, 33, 12, 7]])
    for i in range(3):
        with fused(model, ads, Decision([i], [1.0], [])):
            got = np.array(model(toks))
        attach_lora(model, ads[i].config, ads[i].weights)
        want = np.array(model(toks))
        detach_lora(model)
        np.testing.assert_allclose(got, want, atol=1e-5)
    after = params(model)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_topk_decision_fuses_the_weighted_sum(tmp_path):
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model)
    d = Decision([2, 0], [0.7, 0.3], [])
    upd = decision_updates(ads, d)
    for p, (b, a) in upd.items():
        want = sum(
            w
            * ads[i].config.scale_of(p)
            * np.array(ads[i].weights[f"{p}.lora_b"])
            @ np.array(ads[i].weights[f"{p}.lora_a"])
            for i, w in zip([2, 0], [0.7, 0.3], strict=True)
        )
        np.testing.assert_allclose(np.array(b @ a), want, atol=1e-5)


def test_generate_routed_reuses_cache_matches_plain_generation_and_restores(tmp_path, tok):
    model = tiny_model(layers=4)
    ads = _adapters(tmp_path, model, layers=(2, 3))
    before = params(model)
    prompt = "route me to adapter one"
    res = generate_routed(model, tok, ads, _Fixed(1, 3, layer=2), prompt, max_tokens=8)
    assert res.decision.top1 == 1
    assert res.reused_layers == 2
    assert len(res.tokens) == 8 or res.tokens[-1] == 2
    # reference: adapter 1 attached (unfused), plain greedy generation over the whole prompt
    attach_lora(model, ads[1].config, ads[1].weights)
    steps = generate_step(mx.array(tok.encode(prompt)), model)
    ref = [int(next(steps)[0]) for _ in res.tokens]
    detach_lora(model)
    assert res.tokens == ref
    after = params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_generate_without_reuse_and_uniform_merge(tmp_path, tok):
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model)  # adapters on layer 0: no reuse possible above layer 0
    before = params(model)
    res = generate_routed(model, tok, ads, _Fixed(0, 3, layer=1), "abc", max_tokens=4)
    assert res.reused_layers == 0 and res.decision.top1 == 0
    res = generate_routed(model, tok, ads, UniformRouter(3), "abc", mode="all", max_tokens=4)
    assert res.decision.indices == [0, 1, 2]
    np.testing.assert_allclose(res.decision.weights, [1 / 3] * 3)
    after = params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["delta", "copy"])
def test_switcher_matches_fuse_reuses_buffers_and_restores_exactly(tmp_path, method):
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model, layers=(0, 1))
    before = params(model)
    toks = mx.array([[1, 5, 9, 33, 12, 7]])
    sw = AdapterSwitcher(model, ads, method=method)
    seq = [
        Decision([0], [1.0], []),
        Decision([2, 1], [0.6, 0.4], []),
        Decision([], [], []),
        Decision([1], [1.0], []),
    ]
    for d in seq:
        sw.apply(d)
        got = np.array(model(toks))
        sw.restore()
        with fused(model, ads, d):
            want = np.array(model(toks))
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(sw._spare) == 6  # one spare buffer per adapted weight, kept for the next switch
    sw.release()
    after = params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["delta", "copy"])
def test_switcher_writes_into_the_previous_buffers(method):
    """Steady-state switches allocate no second copy of the adapted weights (donated buffers)."""
    dims = dict(hidden_size=512, intermediate_size=1024, num_attention_heads=8)
    model = train_tiny_model(0, num_hidden_layers=1, **dims)
    targets = ["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    ads = []
    for i in range(2):
        cfg = AdapterConfig(rank=4, alpha=4, targets=targets, layers=[0], name=f"s{i}")
        w = {}
        for p in cfg.module_paths():
            o, k = _weight(model, p).shape
            w[f"{p}.lora_a"] = mx.random.normal((4, k))
            w[f"{p}.lora_b"] = 0.01 * mx.random.normal((o, 4))
        mx.eval(w)
        ads.append(Adapter(cfg, w, f"s{i}", "", str(i)))
    adapted = sum(_weight(model, p).nbytes for p in ads[0].module_paths())
    sw = AdapterSwitcher(model, ads, method=method)
    sw.apply(Decision([0], [1.0], []))
    active = mx.get_active_memory()
    mx.reset_peak_memory()
    for i in range(4):
        sw.apply(Decision([(i + 1) % 2], [1.0], []))
    assert mx.get_peak_memory() - active < 0.5 * adapted
    sw.release()


def test_delta_switches_stay_within_rounding_and_refresh_exactly(tmp_path):
    """Delta switches drift by float rounding only; every (refresh_every+1)-th switch is exact."""
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model, layers=(0, 1))
    before = params(model)
    sw = AdapterSwitcher(model, ads, refresh_every=3)
    seq = [Decision([i % 3], [1.0], []) for i in range(9)]
    for n, d in enumerate(seq):
        sw.apply(d)
        for p, (b, a) in decision_updates(ads, d).items():
            got = np.array(_weight(model, p))
            want = np.array(mx.addmm(mx.array(before[p + ".weight"]), b, a))
            if n % 4 == 0:  # a fresh fuse (first switch) or a refresh after 3 deltas
                assert np.array_equal(got, want), (n, p)
            else:
                assert np.abs(got - want).max() <= 4 * n * np.spacing(np.abs(want).max()), (n, p)
        assert sw._live[p].deltas == n % 4
        sw.restore()
    sw.release()
    after = params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_delta_reapplying_a_decision_is_free_and_a_new_base_is_never_patched(tmp_path):
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model, layers=(0, 1))
    sw = AdapterSwitcher(model, ads)
    d = Decision([1], [1.0], [])
    sw.apply(d)
    path = next(iter(sw._live))
    first = _weight(model, path)
    sw.apply(d)  # restore + apply the same decision: the spare buffer is put back as is
    assert _weight(model, path) is first and sw._live[path].deltas == 0
    sw.restore()
    # the user replaces a base weight: a delta on the old fused buffer would be wrong
    mod = linear_at(model, path)
    mod.weight = mod.weight * 2
    new_base = np.array(mod.weight)
    sw.apply(Decision([0], [1.0], []))
    b, a = ads[0].factors(path, 1.0)
    want = np.array(mx.addmm(mx.array(new_base), b, a))
    assert np.array_equal(np.array(_weight(model, path)), want)
    sw.release()


def test_delta_never_drifts_low_precision_weights(tmp_path):
    """fp16 weights: one rounding is ~1e-3, so every switch is an exact copy fuse."""
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model, layers=(0, 1))
    model.set_dtype(mx.float16)
    before = params(model)
    sw = AdapterSwitcher(model, ads)
    for i in range(4):
        d = Decision([i % 3], [1.0], [])
        sw.apply(d)
        for p, (b, a) in decision_updates(ads, d).items():
            w32 = mx.array(before[p + ".weight"]).astype(mx.float32)
            want = np.array(mx.addmm(w32, b, a).astype(mx.float16))
            assert np.array_equal(np.array(_weight(model, p)), want)
            assert sw._live[p].deltas == 0
        sw.restore()
    sw.release()


def _weight(model, path):
    return get_module(model, path).weight


def test_fused_groups_fuse_each_distinct_decision_once_then_restore(tmp_path):
    """Equal decisions (same adapters and weights) share one switch; other weights do not."""
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model, layers=(0, 1))
    before = params(model)
    toks = mx.array([[1, 5, 9, 33, 12, 7]])
    ds = [
        Decision([0, 1], [0.7, 0.3], []),
        Decision([0, 1], [0.4, 0.6], []),
        Decision([2], [1.0], []),
        Decision([0, 1], [0.7, 0.3], []),
    ]
    seen = []
    for members in fused_groups(model, ads, ds):
        got = np.array(model(toks))
        seen.append(members)
        fresh = tiny_model(layers=2)  # the same base, fused from scratch
        with fused(fresh, ads, ds[members[0]]):
            np.testing.assert_allclose(got, np.array(fresh(toks)), atol=1e-5)
    assert seen == [[0, 3], [1], [2]]
    after = params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
