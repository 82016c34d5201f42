"""The scheduler driven turn by turn (no thread, no HTTP): pipelined decode, rows joining
mid-batch, per-row matrix-vector products for small batches."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers_route_cli import _dirs

import mlx_mixlora  # noqa: F401
from mlx_mixlora.serve.engine import Job
from mlx_mixlora.serve.load import load_service
from mlx_mixlora.serve.rowsplit import RowSplitLinear, attach_row_split, detach_row_split
from mlx_mixlora.serve.sampling import RowSampler

PROMPTS = [
    "Review: a warm and charming film .\nSentiment:",
    "News: The bank sold shares on monday.\nTopic:",
    "Translate: the cat\n",
    "Q: 2 + 2 =",
    "Summarize: rain fell all day in the town and the river rose.",
]
# (prompt, adapter (-1: base), max_tokens): different lengths, so rows leave at different steps
JOBS = [(0, 0, 9), (1, 1, 4), (2, -1, 12), (3, 2, 1), (4, 3, 7), (0, 3, 5), (1, 0, 10)]


def _engine(pipeline=True, split_rows=None):
    model_dir, ads = _dirs()
    engine = load_service(model_dir, ads, max_batch=4, split_rows=split_rows).engine
    engine.pipeline = pipeline
    return engine


def _run(engine, jobs, join_at=(0, 0, 0, 3, 3, 5, 5), temperature=0.0):
    """Submit job i before turn join_at[i]; turn until all are done. Returns (text, n, reason)."""
    out = [dict(text="", done=None) for _ in jobs]

    def emit_for(i):
        def emit(ev):
            if ev["type"] == "text":
                out[i]["text"] += ev["text"]
            elif ev["type"] in ("done", "error"):
                out[i]["done"] = ev

        return emit

    turn = 0
    while any(o["done"] is None for o in out):
        for i, (p, a, n) in enumerate(jobs):
            if join_at[i] == turn:
                toks = engine.tokenizer.encode(PROMPTS[p])
                sampler = RowSampler(temperature, seed=100 + i)
                engine.submit(Job(toks, a, n, sampler, emit_for(i)))
        engine.turn()
        turn += 1
        assert turn < 200
    assert engine.stats()["active_rows"] == 0
    return [(o["text"], o["done"]["completion_tokens"], o["done"]["finish_reason"]) for o in out]


@pytest.fixture(scope="module")
def solo():
    """Each job decoded alone (one row, unpipelined, no split): the reference answers."""
    engine = _engine(pipeline=False, split_rows=0)
    return [_run(engine, [j], join_at=(0,))[0] for j in JOBS]


@pytest.mark.parametrize(("pipeline", "split_rows"), [(True, 0), (False, 4), (True, 4)])
def test_rows_joining_and_leaving_mid_batch_give_the_solo_answers(solo, pipeline, split_rows):
    engine = _engine(pipeline=pipeline, split_rows=split_rows)
    got = _run(engine, JOBS)
    assert got == solo
    assert [n for _, n, _ in got] == [9, 4, 12, 1, 7, 5, 10]  # no EOS in these: every row ran out
    assert engine.stats()["peak_rows"] == 4  # they did share steps


def test_pipelined_and_unpipelined_sampling_draw_the_same_tokens():
    a = _run(_engine(pipeline=True), JOBS, temperature=0.9)
    b = _run(_engine(pipeline=False), JOBS, temperature=0.9)
    assert a == b
    assert len({t for t, _, _ in a}) > 3  # the rows' texts differ


def test_pipelining_starts_no_step_that_every_row_would_waste():
    steps = {}
    for pipeline in (False, True):
        engine = _engine(pipeline=pipeline)
        _run(engine, [JOBS[0], JOBS[1]], join_at=(0, 0))
        steps[pipeline] = engine.stats()["decode_steps"]
    # 9 and 4 tokens, both ended by max_tokens: the first token comes from the prefill,
    # then 8 steps; pipelined, no step is started after the longer row's last token
    assert steps == {False: 8, True: 8}


def test_row_split_linear_is_the_linear_row_by_row():
    lin = nn.Linear(16, 24)
    mx.eval(lin.parameters())
    split = RowSplitLinear(lin, max_rows=4)
    x = mx.random.normal((3, 1, 16), key=mx.random.key(0))
    got = np.array(split(x))
    assert got.shape == (3, 1, 24)
    for b in range(3):  # each row equals that row through the Linear alone, bit for bit
        assert np.array_equal(got[b], np.array(lin(x[b : b + 1]))[0])
    np.testing.assert_allclose(got, np.array(lin(x)), rtol=1e-5, atol=1e-5)
    big = mx.random.normal((2, 3, 16), key=mx.random.key(1))  # 6 rows > 4: one GEMM
    assert np.array_equal(np.array(split(big)), np.array(lin(big)))


def test_attach_row_split_wraps_every_linear_and_detach_restores():
    model_dir, ads = _dirs()
    engine = load_service(model_dir, ads, split_rows=0).engine
    model = engine.model
    plain = {p for p, m in model.named_modules() if type(m) is nn.Linear}
    assert attach_row_split(model, 1) == 0  # 1 row is never split: nothing to wrap
    assert attach_row_split(model, 3) == len(plain) > 0
    wrapped = {p for p, m in model.named_modules() if isinstance(m, RowSplitLinear)}
    assert wrapped == plain  # adapter bases (…q_proj.base) and the LM head included
    detach_row_split(model)
    assert {p for p, m in model.named_modules() if type(m) is nn.Linear} == plain
    assert not any(isinstance(m, RowSplitLinear) for _, m in model.named_modules())
