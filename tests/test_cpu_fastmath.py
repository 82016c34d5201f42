"""cpu.fastmath: the fast CPU exp, softmax, SiLU and attention agree with exact math and MLX's own."""

from __future__ import annotations

import math

import mlx_mixlora  # noqa: F401  # isort: skip  (BLAS preload before mlx.core)
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_mixlora.cpu import fastmath


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def test_exp_is_within_two_ulp_of_float64_exp_over_the_normal_range():
    x = np.linspace(-87.3, 88.3, 400_001, dtype=np.float32)
    got = np.array(fastmath.exp(mx.array(x)))
    exact = np.exp(x.astype(np.float64)).astype(np.float32)
    ulps = _ulps(got, exact)
    assert ulps.max() <= 2 and (ulps > 1).mean() < 1e-3


def test_exp_needs_one_temporary_at_most():
    """Fused into few enough kernels that a big input costs the output plus one temporary."""
    x = mx.random.normal((512, 8192)) * 5
    mx.eval(x)
    rest = mx.get_active_memory()
    mx.reset_peak_memory()
    y = fastmath.exp(x)
    mx.eval(y)
    assert mx.get_peak_memory() - rest <= 2 * x.nbytes + 4096  # + scalar constants


def test_exp_edges_underflow_overflow_and_nan():
    x = mx.array([-math.inf, -1e4, -88.0, 0.0, 1.0, 89.0, 1e4, math.inf, math.nan])
    got = np.array(fastmath.exp(x))
    assert got[:3].tolist() == [0.0, 0.0, 0.0]
    assert got[3] == 1.0 and abs(got[4] - math.e) < 1e-6
    assert np.isposinf(got[5:8]).all() and np.isnan(got[8])


def _grad(fn, x, w):
    return mx.grad(lambda z: (fn(z) * w).sum())(x)


def test_exp_softmax_silu_values_and_gradients_match_mlx():
    x = mx.random.normal((6, 9, 33), key=mx.random.key(0)) * 4
    w = mx.random.normal(x.shape, key=mx.random.key(1))
    pairs = [
        (fastmath.exp, mx.exp, 1e-6),
        (fastmath.softmax, lambda z: mx.softmax(z, axis=-1), 1e-6),
        (fastmath.silu, nn.silu, 1e-6),
    ]
    for ours, ref, tol in pairs:
        scale = mx.abs(ref(x)).max().item() + 1.0
        assert mx.abs(ours(x) - ref(x)).max().item() <= tol * scale
        g, gr = _grad(ours, x, w), _grad(ref, x, w)
        assert mx.abs(g - gr).max().item() <= tol * (mx.abs(gr).max().item() + 1.0)


@pytest.mark.parametrize("mask", ["causal", None, "bool"])
def test_attention_matches_mlx_sdpa_with_grouped_heads(mask):
    k0, k1, k2, k3 = (mx.random.key(i) for i in range(4))
    q = mx.random.normal((2, 8, 12, 16), key=k0)
    k = mx.random.normal((2, 2, 12, 16), key=k1)
    v = mx.random.normal((2, 2, 12, 16), key=k2)
    if mask == "bool":  # a block-diagonal causal mask, as packing builds
        mask = (mx.random.uniform(shape=(2, 1, 12, 12), key=k3) > 0.4) | mx.eye(12, dtype=mx.bool_)

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) ** 2).sum()

    ours = lambda q, k, v: fastmath.attention(q, k, v, 0.25, mask)  # noqa: E731
    ref = lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)  # noqa: E731
    assert mx.abs(ours(q, k, v) - ref(q, k, v)).max().item() <= 1e-6
    g = mx.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
    gr = mx.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g, gr, strict=True):
        assert mx.abs(a - b).max().item() <= 1e-5


def test_attention_refuses_an_unknown_mask_name():
    q = mx.zeros((1, 2, 3, 4))
    with pytest.raises(ValueError, match="unknown attention mask"):
        fastmath.attention(q, q, q, 1.0, "sliding")


def test_cpu_math_is_on_for_the_cpu_and_can_be_switched_off(monkeypatch):
    before = mx.default_device()
    mx.set_default_device(mx.cpu)
    try:
        assert fastmath.use_cpu_math()
        monkeypatch.setenv("MIXLORA_CPU_MATH", "0")
        assert not fastmath.use_cpu_math()
    finally:
        mx.set_default_device(before)
