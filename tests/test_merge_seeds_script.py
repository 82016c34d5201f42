"""benchmarks/merge_seeds.py: its rank-agreement arithmetic (Kendall's τ-b between seeds)."""

from __future__ import annotations

import math

import pytest
from helpers_bench import load_benchmark


@pytest.fixture(scope="module")
def ms():
    return load_benchmark("merge_seeds")


def test_kendall_tau_b_matches_hand_counts(ms):
    assert ms.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert ms.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped pair of six: (5 - 1) / 6
    assert ms.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # a tie in y: 6 pairs ordered in x, 5 in y; 3 concordant, 2 discordant -> 1 / sqrt(30)
    assert ms.kendall_tau([1, 2, 3, 4], [1, 3, 3, 2]) == pytest.approx((3 - 2) / math.sqrt(6 * 5))
    assert math.isnan(ms.kendall_tau([1, 1], [2, 2]))


def test_kendall_tau_b_against_scipy_when_present(ms):
    stats = pytest.importorskip("scipy.stats")
    x = [0.42, 0.36, 0.35, 0.35, 0.33, 0.30, 0.16, 0.09]
    y = [0.43, 0.39, 0.37, 0.40, 0.39, 0.36, 0.06, 0.02]
    assert ms.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_rank_agreement_pairs_every_two_seeds(ms):
    seeds = [
        {"seed": 0, "mean_retention": {"a": 0.5, "b": 0.3, "c": 0.1}},
        {"seed": 1, "mean_retention": {"a": 0.6, "b": 0.2, "c": 0.3}},
        {"seed": 2, "mean_retention": {"a": 0.1, "b": 0.2, "c": 0.3}},
    ]
    got = ms.rank_agreement(seeds, ["a", "b", "c"])
    assert got["pairs"] == {"0-1": 0.333, "0-2": -1.0, "1-2": -0.333}
    assert got["mean"] == pytest.approx(-1 / 3, abs=1e-3)
    assert ms.rank_agreement(seeds, ["a", "b"])["pairs"]["0-1"] == 1.0
