"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_mixlora.tasks.metrics import (
    accuracy,
    exact_match,
    macro_f1,
    mean_rouge,
    mean_rouge_l,
    normalize,
    rouge,
    rouge_l,
)


def test_normalize_and_exact_match():
    assert normalize("  Sci/Tech. ") == "sci/tech"
    assert normalize("Yes,\n") == "yes"
    assert exact_match(" Sports!", "sports")
    assert not exact_match("Sports news", "Sports")


def test_accuracy_and_macro_f1_by_hand():
    refs = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", "c", "c"]
    assert accuracy(preds, refs) == pytest.approx(4 / 6)
    # per class: a: tp2 fp0 fn1 -> 4/5; b: tp1 fp1 fn1 -> 2/4; c: tp1 fp1 fn0 -> 2/3
    assert macro_f1(preds, refs) == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)
    # a constant predictor on balanced data: accuracy at chance, macro-F1 lower
    refs2 = ["yes", "no"] * 5
    assert accuracy(["yes"] * 10, refs2) == 0.5
    assert macro_f1(["yes"] * 10, refs2) == pytest.approx((2 * 5 / (10 + 5) + 0) / 2)
    # an out-of-label answer is a miss for the true class, and label list is respected
    assert macro_f1(["maybe", "no"], ["yes", "no"], labels=["yes", "no"]) == pytest.approx(
        (0 + 1) / 2
    )
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # without stemming: P = 2/3, R = 2/4 -> F = 2PR/(P+R) = 4/7
    assert rouge_l("police killed gunman", "police kill the gunman", stem=False) == pytest.approx(
        4 / 7
    )
    # with Porter stemming (the default, as for CNN/DailyMail) killed = kill: P = 1, R = 3/4
    assert rouge_l("police killed gunman", "police kill the gunman") == pytest.approx(6 / 7)
    assert rouge_l("Mayor opens bridge.", "mayor opens BRIDGE") == 1.0
    assert rouge_l("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0
    assert mean_rouge_l(["a b", "c"], ["a b", "d"]) == 0.5


def test_rouge_1_and_2_by_hand():
    # unigrams: the cat on the mat match 5 of 6 each way; bigrams: "the cat", "on the",
    # "the mat" match 3 of 5 each way
    r = rouge("the cat sat on the mat", "the cat is on the mat")
    assert r["rouge_1"] == pytest.approx(5 / 6) and r["rouge_2"] == pytest.approx(3 / 5)
    assert mean_rouge(["a b", "x"], ["a b", "y"]) == {
        "rouge_1": 0.5,
        "rouge_2": 0.5,
        "rouge_l": 0.5,
    }


@given(
    st.lists(st.sampled_from("abcde"), max_size=12), st.lists(st.sampled_from("abcde"), max_size=12)
)
def test_rouge_l_properties(a, b):
    x, y = " ".join(a), " ".join(b)
    score = rouge_l(x, y)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(rouge_l(y, x))
    if a:
        assert rouge_l(x, x) == 1.0
