"""Evaluation: batched scoring and generation are exact; methods attach and detach cleanly."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
from helpers_train import reference_greedy, tiny_bpe_llama

from mlx_mixlora.scoring import (
    Method,
    adapter_method,
    base_method,
    encode_continuation,
    encode_prompt,
    evaluate_matrix,
    greedy_generate,
    label_scores,
    score_task,
    sequence_logprobs,
)
from mlx_mixlora.tasks import get_task, load_examples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bpe_llama(tmp_path_factory.mktemp("tok"), seed=0)


def _ref_logprob(model, ids, start):
    logits = model(mx.array([ids]))[0].astype(mx.float32)
    logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    return sum(float(logp[k - 1, ids[k]]) for k in range(start, len(ids)))


def test_batched_sequence_logprobs_match_one_at_a_time(tiny):
    model, tok = tiny
    prompts = [
        encode_prompt(tok, p) for p in ["Review: the plot was dull", "News: The bank cut rates"]
    ]
    conts = [encode_continuation(tok, " positive"), encode_continuation(tok, " Business")]
    got = sequence_logprobs(model, prompts, conts, vocab=400)
    for i in range(2):
        want = _ref_logprob(model, prompts[i] + conts[i], len(prompts[i]))
        assert got[i] == pytest.approx(want, rel=1e-4, abs=1e-3)
        assert got[i] < 0


def test_label_scores_rank_labels_by_likelihood(tiny):
    model, tok = tiny
    task = get_task("sentiment")
    ex = load_examples(task, "synthetic", "test", n=4)
    scores = label_scores(model, tok, [e["prompt"] for e in ex], task.label_names)
    assert scores.shape == (4, 2)
    eos = [tok.eos_token_id]
    p = encode_prompt(tok, ex[2]["prompt"])
    want = _ref_logprob(model, p + encode_continuation(tok, " positive") + eos, len(p))
    assert scores[2, 1] == pytest.approx(want, rel=1e-4, abs=1e-3)
    # the KV-cache path (prompt once, labels trimmed off) equals padded full sequences,
    # including multi-token labels and prompts of equal length sharing one batch
    cls = get_task("classification")
    prompts = [e["prompt"] for e in load_examples(cls, "synthetic", "test", n=6)] * 2
    got = label_scores(model, tok, prompts, cls.label_names)
    p_ids = [encode_prompt(tok, q) for q in prompts]
    l_ids = [encode_continuation(tok, " " + lab) + eos for lab in cls.label_names]
    assert max(len(x) for x in l_ids) > 2  # " Sci/Tech</s>" spans several tokens
    ref = sequence_logprobs(
        model, [q for q in p_ids for _ in l_ids], [x for _ in p_ids for x in l_ids], vocab=400
    ).reshape(len(prompts), -1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_batched_greedy_matches_single_prompt_decoding(tiny):
    model, tok = tiny
    prompts = [e["prompt"] for e in load_examples("qa", "synthetic", "test", n=5)]
    prompts = prompts + prompts[:3]  # equal lengths: decoded together in one cache
    batched = greedy_generate(model, tok, prompts, max_new_tokens=6)
    singles = [greedy_generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == singles and batched[5:] == batched[:3]
    # reference: plain argmax loop over the full sequence
    assert batched[0] == reference_greedy(model, tok, encode_prompt(tok, prompts[0]), 6)


def test_score_task_reports_both_label_metrics(tiny):
    model, tok = tiny
    task = get_task("classification")
    ex = load_examples(task, "synthetic", "test", n=12)
    r = score_task(model, tok, task, ex, batch_size=5)
    assert r["n"] == 12 and r["score"] == r["accuracy_gen"]
    for k in ("accuracy_gen", "macro_f1_gen", "accuracy_ll", "macro_f1_ll"):
        assert 0.0 <= r[k] <= 1.0
    # label-scoring accuracy equals what the argmax of label_scores gives
    s = label_scores(model, tok, [e["prompt"] for e in ex], task.label_names)
    preds = [task.label_names[j] for j in s.argmax(1)]
    assert r["accuracy_ll"] == pytest.approx(
        np.mean([p == e["completion"].strip() for p, e in zip(preds, ex, strict=True)])
    )
    summ = score_task(
        model,
        tok,
        get_task("summarization"),
        load_examples("summarization", "synthetic", "test", n=3),
    )
    assert set(summ) >= {"rouge_l", "score"} and summ["score"] == summ["rouge_l"]


def test_matrix_with_an_adapter_method_leaves_the_base_untouched(tiny, tmp_path):
    from mlx_mixlora.adapter_format import AdapterConfig, save_adapter
    from mlx_mixlora.lora import lora_modules

    model, tok = tiny
    cfg = AdapterConfig(rank=4, alpha=8.0, targets=["q_proj", "v_proj"], layers=[0, 1], name="a")
    rng = np.random.default_rng(0)
    weights = {}
    for p in cfg.module_paths():
        out_dim = 64 if p.endswith("q_proj") else 32
        weights[f"{p}.lora_a"] = rng.normal(0, 0.5, (4, 64)).astype(np.float32)
        weights[f"{p}.lora_b"] = rng.normal(0, 0.5, (out_dim, 4)).astype(np.float32)
    save_adapter(tmp_path / "a", cfg, {k: mx.array(v) for k, v in weights.items()})

    probe = mx.array([encode_prompt(tok, "Review: the plot was dull")])
    before = np.array(model(probe))
    calls = []

    def spy(model_, task):
        calls.append(task.name)
        return base_method().use(model_, task)

    tasks = [get_task("sentiment"), get_task("qa")]
    sets = {t.name: load_examples(t, "synthetic", "test", n=6) for t in tasks}
    res = evaluate_matrix(
        model,
        tok,
        tasks,
        sets,
        [base_method(), adapter_method("a", tmp_path / "a"), Method("spy", spy)],
        progress=False,
    )
    assert calls == ["sentiment", "qa"]
    assert res["tasks"] == ["sentiment", "qa"] and [m["name"] for m in res["methods"]] == [
        "base",
        "a",
        "spy",
    ]
    assert not lora_modules(model)
    np.testing.assert_array_equal(np.array(model(probe)), before)
    base_s, ad_s = res["scores"]["base"]["sentiment"], res["scores"]["a"]["sentiment"]
    assert res["scores"]["spy"]["sentiment"]["accuracy_ll"] == base_s["accuracy_ll"]
    # the adapter changes the model's answers, so some score moves
    assert (
        any(not math.isclose(base_s[k], ad_s[k]) for k in ("accuracy_ll", "macro_f1_ll"))
        or base_s["samples"] != ad_s["samples"]
    )
