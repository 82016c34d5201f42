"""The learned gate: training, routing modes, save/load and adapter-set identity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_route import save_random_adapters, tiny_model

import mlx_mixlora  # noqa: F401
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.route import GateConfig, decide, load_adapters, load_gate_router, save_gate
from mlx_mixlora.route.gate import load_gate, train_gate


def _clusters(n_per=60, dim=16, k=3, seed=0, spread=1.0, noise_seed=None):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, dim))
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    x = np.concatenate([c + rng.normal(0, spread, (n_per, dim)) for c in centers])
    y = np.repeat(np.arange(k), n_per)
    return x.astype(np.float32), y


def test_gate_learns_separable_clusters_and_generalises():
    x, y = _clusters(seed=0)
    gate, stats = train_gate(x, y, 3, hidden=32, steps=200)
    assert stats["train_accuracy"] == 1.0
    assert stats["loss"] < 0.05
    xt, yt = _clusters(n_per=40, seed=0, noise_seed=7)  # held out: same centers, fresh noise
    p = gate.probs(xt)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p.argmax(axis=1) == yt).mean() >= 0.99


def test_gate_refuses_missing_class():
    x, y = _clusters(k=2)
    with pytest.raises(MixloraError, match="adapter index 2"):
        train_gate(x, y, 3)


def test_decide_modes():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    top1 = decide(p, "top1")
    assert [d.indices for d in top1] == [[0], [0]] and top1[0].weights == [1.0]
    topk = decide(p, "topk", top_k=2)
    assert topk[0].indices == [0, 1]
    np.testing.assert_allclose(topk[0].weights, [0.7 / 0.9, 0.2 / 0.9])
    thr = decide(p, "threshold", threshold=0.5)
    assert thr[0].top1 == 0 and thr[1].indices == [] and thr[1].top1 == -1
    alld = decide(p, "all")
    np.testing.assert_allclose(alld[1].weights, [0.4, 0.35, 0.25])
    with pytest.raises(MixloraError, match="unknown routing mode"):
        decide(p, "top3")


def _config(adapters, layer=0):
    return GateConfig(
        layer=layer, hidden_size=16, gate_hidden=32, adapters=[a.identity() for a in adapters]
    )


def test_save_load_roundtrip_and_adapter_identity(tmp_path):
    model = tiny_model()
    dirs = save_random_adapters(tmp_path / "ads", model, n=3)
    adapters = load_adapters(dirs)
    x, y = _clusters()
    gate, _ = train_gate(x, y, 3, hidden=32, steps=50)
    save_gate(tmp_path / "gate", gate, _config(adapters))
    assert sorted(p.name for p in (tmp_path / "gate").iterdir()) == [
        "gate.json",
        "gate.safetensors",
    ]
    router = load_gate_router(tmp_path / "gate", adapters)
    np.testing.assert_array_equal(router.gate.probs(x), gate.probs(x))
    # another order, another set, or same names with other weights: refused
    with pytest.raises(MixloraError, match="trained for adapters"):
        load_gate_router(tmp_path / "gate", adapters[::-1])
    with pytest.raises(MixloraError, match="trained for adapters"):
        load_gate_router(tmp_path / "gate", adapters[:2])
    other = save_random_adapters(tmp_path / "other", tiny_model(seed=3), n=3, scale=0.3)
    with pytest.raises(MixloraError, match="different weights"):
        load_gate_router(tmp_path / "gate", load_adapters(other))
    with pytest.raises(MixloraError, match="already exists"):
        save_gate(tmp_path / "gate", gate, _config(adapters))


def test_corrupt_gate_files_give_one_clear_error(tmp_path):
    model = tiny_model()
    adapters = load_adapters(save_random_adapters(tmp_path / "ads", model, n=3))
    x, y = _clusters()
    gate, _ = train_gate(x, y, 3, hidden=32, steps=5)
    g = save_gate(tmp_path / "gate", gate, _config(adapters))
    cfg = json.loads((g / "gate.json").read_text())
    (g / "gate.json").write_text(json.dumps({**cfg, "gate_hidden": 8}))
    with pytest.raises(MixloraError, match="does not match gate.json"):
        load_gate(g)
    (g / "gate.json").write_text(json.dumps({**cfg, "mode": "top9"}))
    with pytest.raises(MixloraError, match="unknown mode"):
        load_gate(g)
    (g / "gate.json").write_text(json.dumps({**cfg, "format": "x"}))
    with pytest.raises(MixloraError, match="format"):
        load_gate(g)
    (g / "gate.json").write_text(json.dumps(cfg))
    (g / "gate.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(MixloraError, match="not a safetensors"):
        load_gate(g)
    with pytest.raises(MixloraError, match="not found"):
        load_gate(tmp_path / "nope")
