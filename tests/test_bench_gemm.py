"""The GEMM share of a training step (benchmarks/train_throughput.py): shapes, FLOPs, timing, arithmetic."""

from __future__ import annotations

import itertools

import pytest

from mlx_mixlora.bench.gemm import (
    gemm_flops,
    gemm_share,
    mlx_product,
    time_gemms,
    train_step_gemms,
)
from mlx_mixlora.bench.spec import TINY, TINYLLAMA


def _expected_flops(cfg: dict, batch: int, seq: int) -> float:
    """Counted another way: 2·tokens·(weights forward + weights backward) + attention."""
    t, h, i, v = batch * seq, cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    layers = cfg["num_hidden_layers"]
    per_layer = 2 * h * h + 2 * kv * h + 3 * h * i  # q, o, k, v, gate, up, down
    weights = layers * per_layer * 2 - (h * h + 2 * kv * h)  # layer 0: no q/k/v input grad
    weights += 2 * v * h  # LM head both ways
    attention = 6 * batch * h * seq * seq * layers  # 6 products of heads × L × L × head_dim
    return 2.0 * t * weights + 2.0 * attention


@pytest.mark.parametrize("cfg", [TINY, dict(TINYLLAMA, num_hidden_layers=2)])
def test_step_gemm_flops_match_a_hand_count(cfg):
    gemms = train_step_gemms(cfg, 4, 256)
    assert sum(gemm_flops(g) for g in gemms) == pytest.approx(_expected_flops(cfg, 4, 256))


def test_the_tinyllama_step_is_about_631_gflop():
    gemms = train_step_gemms(dict(TINYLLAMA, num_hidden_layers=2), 4, 256)
    assert sum(gemm_flops(g) for g in gemms) / 1e9 == pytest.approx(631.36, abs=0.01)


def test_gemm_share_is_step_minus_gemm_time():
    gemms = [dict(name="a", m=2, n=3, k=5, ta=False, tb=True, batch=1, count=4),
             dict(name="b", m=10, n=10, k=10, ta=False, tb=False, batch=2, count=1)]  # fmt: skip
    share = gemm_share(gemms, [0.1, 0.2], step_seconds=1.0)
    assert share["gemm_seconds_per_step"] == 0.6  # 4 × 0.1 + 1 × 0.2
    assert share["non_gemm_seconds"] == 0.4 and share["non_gemm_share"] == 0.4
    assert share["gemm_gflop_per_step"] == round((4 * 60 + 4000) / 1e9, 1)
    assert share["gemm_gflops_measured"] == round(4240 / 0.6 / 1e9, 1)


def test_time_gemms_times_each_distinct_shape_once():
    gemms = train_step_gemms(TINY, 2, 8)
    built = []

    def product(g):
        built.append((g["m"], g["n"], g["k"], g["ta"], g["tb"], g["batch"]))
        return lambda: None

    seconds = time_gemms(gemms, product)
    assert len(seconds) == len(gemms) and all(s >= 0 for s in seconds)
    assert len(built) == len(set(built)) < len(gemms)  # q/o and their grads share shapes


def test_each_product_runs_with_the_listed_layout_in_mlx_on_one_or_two_streams():
    for ta, tb, batch, streams in itertools.product([False, True], [False, True], [1, 4], [1, 2]):
        g = dict(name="x", m=6, n=5, k=7, ta=ta, tb=tb, batch=batch, count=1)
        mlx_product(g, streams)()  # a layout mismatch raises here


def test_split_products_do_the_same_work():
    """Two streams: each gets half the rows (or half the batch), so the FLOPs are the step's."""
    import mlx.core as mx

    captured = []
    real = mx.matmul

    def spy(a, b, **kw):
        captured.append((a.shape, b.shape))
        return real(a, b, **kw)

    mx.matmul = spy
    try:
        mlx_product(dict(name="x", m=8, n=5, k=7, ta=False, tb=True, batch=1, count=1), 2)()
        mlx_product(dict(name="y", m=8, n=5, k=7, ta=True, tb=False, batch=4, count=1), 2)()
    finally:
        mx.matmul = real
    assert captured == [((4, 7), (7, 5))] * 2 + [((2, 8, 7), (2, 7, 5))] * 2


def _train_throughput():
    from helpers_bench import load_benchmark

    return load_benchmark("train_throughput")


def test_non_gemm_summary_medians_shares_and_the_zero_non_gemm_bound():
    def run(step: float, gemm: float) -> dict:
        return {"gemm": {"step_seconds": step, "gemm_seconds_per_step": gemm,
                         "gemm_gflops_measured": 140.0, "non_gemm_seconds": step - gemm,
                         "non_gemm_share": (step - gemm) / step}}  # fmt: skip

    runs = {"ours": [run(5.0, 4.0), run(6.0, 4.5), run(5.5, 4.2)],
            "torch_peft": [run(5.5, 4.4), run(5.4, 4.3), run(6.0, 4.6)]}  # fmt: skip
    out = _train_throughput().non_gemm_summary(runs)
    assert out["ours"]["step_seconds"] == 5.5 and out["ours"]["gemm_seconds_per_step"] == 4.2
    assert out["ours"]["non_gemm_share"] == round((5.5 - 4.2) / 5.5, 3)
    assert out["ours_share_le_torch_share"] is (
        out["ours"]["non_gemm_share"] <= out["torch_peft"]["non_gemm_share"]
    )
    assert out["speedup_bound_zero_non_gemm"] == round(5.5 / 4.2, 3)  # torch's step ÷ our GEMM time
