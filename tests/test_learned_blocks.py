"""Learned merges' objectives on blocks of rows: the same loss and λ as one padded batch."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_route import random_adapter
from helpers_train import CharTokenizer, tiny_model

import mlx.core as mx  # isort: skip  (mlx_mixlora, via the helpers, preloads BLAS first)
import mlx_mixlora.merge.adamerging as AM
import mlx_mixlora.merge.objectives as O
from mlx_mixlora.adapter_format import Adapter
from mlx_mixlora.merge.calibration import CalibExample
from mlx_mixlora.merge.coefficients import set_coefficients, table_for, weighted_adapters

TOK = CharTokenizer()
CALIB = [
    CalibExample("t0", "is a ok?", ("yes", "no"), " yes"),
    CalibExample("t0", "is the long prompt b ok or not ok, say?", ("yes", "no"), " no"),
    CalibExample("t0", "c ok?", ("yes", "no"), " yes"),
    CalibExample("t1", "say hi to bo", None, " hi bo"),
    CalibExample("t1", "say hi to the whole long row of people here", None, " hi all"),
    CalibExample("t2", "count: 1 2", ("3", "4"), " 3"),
]


def _adapters(model, n=3):
    out = []
    for i in range(n):
        cfg, w = random_adapter(
            model, seed=20 + i, targets=("q_proj", "v_proj", "down_proj"), name=f"a{i}",
            task=f"t{i}", scale=0.3,
        )  # fmt: skip
        out.append(Adapter(cfg, w, f"a{i}"))
    return out


def _conts():
    return [TOK.encode(c.answer, add_special_tokens=False) + [2] for c in CALIB]


def _log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _reference(model, objective: str) -> float:
    """The objective row by row, each row alone and unpadded, from the module's definitions."""
    tasks = sorted({c.task for c in CALIB})
    n_task = {t: sum(c.task == t for c in CALIB) for t in tasks}
    total = 0.0
    for c, cont in zip(CALIB, _conts(), strict=True):
        w = 1.0 / (len(tasks) * n_task[c.task])
        prompt = TOK.encode(c.prompt)
        if objective == "entropy" and c.labels:
            lp = _log_softmax(np.array(model(mx.array([prompt]))[0, -1]))
            firsts = list(
                dict.fromkeys(TOK.encode(" " + x, add_special_tokens=False)[0] for x in c.labels)
            )
            sel = lp[firsts]
            mass = np.log(np.exp(sel).sum())
            q = sel - mass
            total += w * (-(np.exp(q) * q).sum() - O.FORMAT_WEIGHT * mass)
            continue
        ids = prompt + cont
        lp = _log_softmax(np.array(model(mx.array([ids]))[0]))
        for k, tok in enumerate(cont):
            row = lp[len(prompt) - 1 + k]
            term = -row[tok] if objective == "cross_entropy" else -(np.exp(row) * row).sum()
            total += w * term / len(cont)
    return total


@pytest.mark.parametrize("objective", ["entropy", "cross_entropy"])
@pytest.mark.parametrize("block_cost", [0, 10**9])
def test_blocked_loss_equals_the_row_by_row_reference(objective, block_cost, monkeypatch):
    monkeypatch.setattr(O, "BLOCK_COST_TOKENS", block_cost)
    model = tiny_model(0)
    batch = O.build_batch(TOK, CALIB, _conts(), labels_first=objective == "entropy")
    n_tasks = 3
    if block_cost == 0:  # every distinct length its own block
        assert len(batch.parts) > n_tasks
    else:
        assert len(batch.parts) == n_tasks
    assert {p.task for p in batch.parts} == {"t0", "t1", "t2"}
    got = float(O.OBJECTIVES[objective](model, batch))
    assert got == pytest.approx(_reference(model, objective), rel=1e-5)


def test_blocks_are_cut_where_the_padding_saved_pays_for_a_block(monkeypatch):
    monkeypatch.setattr(O, "BLOCK_COST_TOKENS", 10)
    rows = [O._Row("t", [0] * n, 1.0) for n in (3, 3, 4, 50, 52, 53)]
    blocks = O._blocks(rows)
    assert [[len(r.ids) for r in b] for b in blocks] == [[3, 3, 4], [50, 52, 53]]
    monkeypatch.setattr(O, "BLOCK_COST_TOKENS", 1000)
    assert len(O._blocks(rows)) == 1
    # a continuation row drops its last token: it is a target, never an input
    batch = O.build_batch(TOK, CALIB[3:4], [[5, 6, 2]], labels_first=True)
    (part,) = batch.parts
    assert part.tokens.shape[1] == len(TOK.encode(CALIB[3].prompt)) + 2
    assert np.array(part.seq_pos).tolist() == [12, 13, 14]  # BOS + 12 characters, then 5 6 2


def test_blocked_gradients_and_learned_lambda_match_one_block_per_task(monkeypatch):
    model = tiny_model(1)
    ads = _adapters(model)
    table = table_for(ads, "layer", 2)
    lam0 = mx.array(np.random.default_rng(0).uniform(0.2, 0.8, table.shape).astype(np.float32))
    grads = []
    for cost in (0, 10**9):
        monkeypatch.setattr(O, "BLOCK_COST_TOKENS", cost)
        batch = O.build_batch(TOK, CALIB, _conts(), labels_first=True)
        with weighted_adapters(model, ads) as layers:

            def f(lam, layers=layers, batch=batch):
                set_coefficients(layers, table, lam)
                return O.entropy(model, batch)

            grads.append(np.array(mx.grad(f)(lam0)))
    assert np.abs(grads[0]).max() > 1e-3
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)

    def learn(compiled: bool, cost: int):
        monkeypatch.setattr(AM, "COMPILE", compiled)
        monkeypatch.setattr(O, "BLOCK_COST_TOKENS", cost)
        res = AM.learn_coefficients(model, TOK, ads, CALIB, "layer", "distill", steps=12, lr=0.05)
        return np.array(res.lam), res.losses

    base, base_losses = learn(False, 10**9)
    fast, fast_losses = learn(True, 0)
    again, _ = learn(True, 0)
    assert np.array_equal(fast, again)  # deterministic
    assert base_losses[-1] < base_losses[0]
    assert np.abs(fast - 0.3).max() > 0.05  # λ moved from its start
    np.testing.assert_allclose(fast, base, atol=1e-4)
    np.testing.assert_allclose(fast_losses, base_losses, rtol=1e-4, atol=1e-7)
