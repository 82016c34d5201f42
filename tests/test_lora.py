"""Our LoRA layers: math, fusing through `fuse` and restoring, freezing, attach/detach and layer parsing."""

from __future__ import annotations

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload must come before mlx.core)

# isort: on
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers_train import tiny_model
from mlx.utils import tree_flatten

from mlx_mixlora.adapter_format import AdapterConfig, save_adapter
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.fuse import fuse_deltas, restore
from mlx_mixlora.lora import (
    LoRALinear,
    adapter_weights,
    attach_lora,
    detach_lora,
    load_adapter_into,
    lora_modules,
    model_identity,
    parse_layers,
)


def _randomize_b(model, seed=1):
    mx.random.seed(seed)
    for m in lora_modules(model).values():
        m.lora_b = mx.random.normal(m.lora_b.shape) * 0.1


def test_output_is_base_plus_scaled_low_rank():
    mx.random.seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, rank=4, scale=2.5)
    layer.lora_b = mx.random.normal((12, 4))
    x = mx.random.normal((3, 5, 16))
    expected = base(x) + 2.5 * (x @ layer.lora_a.T) @ layer.lora_b.T
    assert mx.allclose(layer(x), expected, atol=1e-6).item()
    assert layer.lora_a.shape == (4, 16) and layer.lora_b.shape == (12, 4)


def test_peft_init_leaves_output_unchanged_and_bounds_a():
    mx.random.seed(0)
    base = nn.Linear(64, 32)
    layer = LoRALinear(base, rank=8, scale=2.0)
    x = mx.random.normal((4, 64))
    assert mx.array_equal(layer(x), base(x)).item()
    bound = 1 / math.sqrt(64)
    a = np.array(layer.lora_a)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound


def test_dropout_only_in_training():
    mx.random.seed(0)
    layer = LoRALinear(nn.Linear(32, 32), rank=4, scale=1.0, dropout=0.5)
    layer.lora_b = mx.ones((32, 4))
    x = mx.ones((8, 32))
    layer.eval()
    a, b = layer(x), layer(x)
    assert mx.array_equal(a, b).item()
    layer.train()
    c, d = layer(x), layer(x)
    assert not mx.array_equal(c, d).item()
    with pytest.raises(MixloraError):
        LoRALinear(nn.Linear(4, 4), rank=2, scale=1.0, dropout=1.0)


def test_fuse_matches_unfused_and_restore_is_bit_exact():
    model = tiny_model()
    cfg = AdapterConfig(rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"], layers=[0, 1])
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    attach_lora(model, cfg)
    _randomize_b(model)
    x = mx.array([[1, 5, 9, 3, 7, 2]])
    unfused = model(x)
    mods = lora_modules(model)
    q = mods["model.layers.0.self_attn.q_proj"]
    q_delta = np.array(q.scale * (q.lora_b @ q.lora_a))
    handle = fuse_deltas(model, {p: (m.scale * m.lora_b, m.lora_a) for p, m in mods.items()})
    for m in mods.values():
        m.lora_b = mx.zeros_like(m.lora_b)  # the LoRA path adds nothing now: only the fused W
    fused = model(x)
    assert mx.allclose(unfused, fused, atol=1e-4).item()
    w0 = before["model.layers.0.self_attn.q_proj.weight"]
    assert np.allclose(np.array(q.base.weight), w0 + q_delta, atol=1e-6)
    restore(model, handle)
    detach_lora(model)
    after = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    assert before.keys() == after.keys()
    for k in before:
        assert np.array_equal(before[k], after[k]), k


def test_fuse_refused_for_quantized_base():
    mx.random.seed(0)
    q = nn.QuantizedLinear.from_linear(nn.Linear(64, 32), group_size=32, bits=4)
    layer = LoRALinear(q, rank=4, scale=1.0)
    assert layer.lora_a.shape == (4, 64) and layer.lora_b.shape == (32, 4)
    x = mx.random.normal((2, 64))
    assert mx.array_equal(layer(x), q(x)).item()
    with pytest.raises(MixloraError, match="unquantized"):
        fuse_deltas(layer, {"base": (layer.lora_b, layer.lora_a)})


def test_only_lora_parameters_get_gradients():
    model = tiny_model()
    cfg = AdapterConfig(
        rank=4, alpha=8, targets=["q_proj", "k_proj", "v_proj", "o_proj"], layers=[0, 1]
    )
    paths = attach_lora(model, cfg)
    trainable = dict(tree_flatten(model.trainable_parameters()))
    assert set(trainable) == {f"{p}.lora_{s}" for p in paths for s in "ab"}
    _randomize_b(model)

    def loss(m, x):
        return m(x).astype(mx.float32).square().mean()

    _, grads = nn.value_and_grad(model, loss)(model, mx.array([[3, 1, 4, 1, 5]]))
    flat = dict(tree_flatten(grads))
    assert set(flat) == set(trainable)
    assert all(mx.abs(g).max().item() > 0 for g in flat.values())


def test_adapter_weights_round_trip_through_the_format(tmp_path):
    model = tiny_model()
    cfg = AdapterConfig(
        rank=4,
        alpha=8,
        targets=["q_proj", "o_proj"],
        layers=[1],
        rank_pattern={"model.layers.1.self_attn.o_proj": 2},
        alpha_pattern={"model.layers.1.self_attn.o_proj": 6.0},
        base_model=model_identity(model),
    )
    attach_lora(model, cfg)
    mods = lora_modules(model)
    assert mods["model.layers.1.self_attn.o_proj"].rank == 2
    assert mods["model.layers.1.self_attn.o_proj"].scale == 3.0
    assert mods["model.layers.1.self_attn.q_proj"].scale == 2.0
    _randomize_b(model)
    w = adapter_weights(model)
    save_adapter(tmp_path / "ad", cfg, w)
    x = mx.array([[2, 7, 1, 8]])
    y = model(x)
    detach_lora(model)
    assert not lora_modules(model)
    got = load_adapter_into(model, tmp_path / "ad")
    assert got.rank == 4
    assert mx.array_equal(model(x), y).item()


def test_attach_errors():
    model = tiny_model()
    with pytest.raises(MixloraError, match="outside the model"):
        attach_lora(model, AdapterConfig(rank=2, alpha=4, targets=["q_proj"], layers=[0, 5]))
    with pytest.raises(MixloraError, match="matches nothing"):
        attach_lora(model, AdapterConfig(rank=2, alpha=4, targets=["qkv_proj"], layers=[0]))
    attach_lora(model, AdapterConfig(rank=2, alpha=4, targets=["q_proj"], layers=[0]))
    with pytest.raises(MixloraError, match="already has LoRA"):
        attach_lora(model, AdapterConfig(rank=2, alpha=4, targets=["q_proj"], layers=[1]))


def test_load_adapter_into_refuses_other_base(tmp_path):
    model = tiny_model()
    cfg = AdapterConfig(
        rank=2, alpha=4, targets=["q_proj"], layers=[0], base_model={"hidden_size": 128}
    )
    w = {
        "model.layers.0.self_attn.q_proj.lora_a": mx.zeros((2, 64)),
        "model.layers.0.self_attn.q_proj.lora_b": mx.zeros((64, 2)),
    }
    save_adapter(tmp_path / "ad", cfg, w)
    with pytest.raises(MixloraError, match="hidden_size"):
        load_adapter_into(model, tmp_path / "ad")
    assert not lora_modules(model)


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("all", list(range(8))),
        ("0-3", [0, 1, 2, 3]),
        ("0,3,5", [0, 3, 5]),
        ("last:2", [6, 7]),
        ("0-1,6", [0, 1, 6]),
        (4, [4]),
        ([7, 2], [2, 7]),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 8) == expected


@pytest.mark.parametrize("spec", ["0-8", "9", "last:9", "3-1", "x", "-1"])
def test_parse_layers_rejects(spec):
    with pytest.raises(MixloraError):
        parse_layers(spec, 8)
