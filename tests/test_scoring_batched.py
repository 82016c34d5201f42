"""Left-padded batches of prompts of different lengths decode as each prompt alone."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers_train import reference_greedy, tiny_bpe_llama

import mlx_mixlora.scoring as S
from mlx_mixlora.tasks import get_task, load_examples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bpe_llama(tmp_path_factory.mktemp("tok"), seed=1)


def _prompts(n_per_task: int = 4) -> list[str]:
    """Prompts of every built-in task: many different token lengths."""
    names = ("classification", "qa", "summarization", "sentiment")
    return [e["prompt"] for t in names for e in load_examples(t, "synthetic", "test", n=n_per_task)]


def _alone_last_logits(model, ids: list[int]) -> np.ndarray:
    return np.array(model(mx.array([ids]))[0, -1])


def test_padded_prefill_gives_each_prompt_its_own_logits(tiny):
    model, tok = tiny
    seqs = [S.encode_prompt(tok, p) for p in _prompts()]
    lengths = {len(s) for s in seqs}
    assert len(lengths) > 6  # really mixed lengths, so rows carry different pads
    seen = []
    for idx, cache, last in S._prefilled(model, seqs, exact=False):
        assert isinstance(cache[0], S.BatchKVCache)
        last = np.array(last)
        for r, i in enumerate(idx):
            np.testing.assert_allclose(last[r], _alone_last_logits(model, seqs[i]), atol=2e-5)
        seen += idx
    assert sorted(seen) == list(range(len(seqs)))


def test_padded_greedy_equals_one_at_a_time_decoding(tiny):
    model, tok = tiny
    prompts = _prompts()
    batched = S.greedy_generate(model, tok, prompts, max_new_tokens=8)
    singles = [S.greedy_generate(model, tok, [p], max_new_tokens=8)[0] for p in prompts]
    exact = S.greedy_generate(model, tok, prompts, max_new_tokens=8, exact=True)
    assert batched == singles == exact
    assert sum(len(t) for t in batched) > 10 * len(prompts)  # real text was generated
    # reference for one short row of a padded batch: a plain argmax loop, no cache
    short = min(range(len(prompts)), key=lambda i: len(S.encode_prompt(tok, prompts[i])))
    assert batched[short] == reference_greedy(model, tok, S.encode_prompt(tok, prompts[short]), 8)


def test_padded_label_scores_equal_the_exact_ones(tiny):
    model, tok = tiny
    task = get_task("classification")  # multi-token labels continue from the padded cache
    prompts = _prompts(3)
    padded = S.label_scores(model, tok, prompts, task.label_names)
    exact = S.label_scores(model, tok, prompts, task.label_names, exact=True)
    assert np.isfinite(padded).all() and padded.std() > 0.1
    np.testing.assert_allclose(padded, exact, rtol=1e-5, atol=1e-4)


def test_models_without_a_plain_kv_cache_fall_back_to_equal_length_batches(tiny, monkeypatch):
    from mlx_lm.models.cache import RotatingKVCache

    model, tok = tiny
    made = []
    real = S.BatchKVCache
    monkeypatch.setattr(S, "BatchKVCache", lambda pads: made.append(pads) or real(pads))
    prompts = _prompts(2)
    S.greedy_generate(model, tok, prompts, max_new_tokens=2)
    assert made  # the plain model is left-padded
    made.clear()
    monkeypatch.setattr(
        model, "make_cache", lambda: [RotatingKVCache(4096) for _ in model.layers], raising=False
    )
    rotating = S.greedy_generate(model, tok, prompts, max_new_tokens=2)
    assert not made
    monkeypatch.delattr(model, "make_cache")
    assert rotating == S.greedy_generate(model, tok, prompts, max_new_tokens=2, exact=True)


@pytest.mark.parametrize("task_name", ["classification", "sentiment"])
def test_one_prefill_gives_the_same_texts_and_label_scores_as_two(tiny, task_name):
    model, tok = tiny
    labels = get_task(task_name).label_names  # classification: multi-token labels
    prompts = _prompts(3)
    texts, scores = S.generate_and_score_labels(model, tok, prompts, 8, labels)
    assert texts == S.greedy_generate(model, tok, prompts, max_new_tokens=8)
    np.testing.assert_array_equal(scores, S.label_scores(model, tok, prompts, labels))
    assert sum(len(t) for t in texts) > 10 * len(prompts) and scores.std() > 0.1


def test_score_task_on_a_label_task_prefills_each_batch_once(tiny, monkeypatch):
    model, tok = tiny
    task = get_task("sentiment")
    examples = load_examples(task, "synthetic", "test", n=10)
    before = S.score_task(model, tok, task, examples, batch_size=4)
    calls = []
    real = S._prefilled
    monkeypatch.setattr(S, "_prefilled", lambda *a, **k: calls.append(1) or real(*a, **k))
    after = S.score_task(model, tok, task, examples, batch_size=4)
    assert len(calls) == 3  # 10 examples in batches of 4: one prefill each, not two
    for key in ("accuracy_gen", "accuracy_ll", "macro_f1_ll"):
        assert after[key] == before[key]


@pytest.mark.parametrize("n, batch_size, workers, sizes", [
    (100, 64, 2, [50, 50]), (48, 64, 2, [24, 24]), (10, 4, 2, [3, 4, 3]), (10, 4, 1, [3, 4, 3]),
    (1, 64, 2, [1]), (130, 64, 1, [43, 44, 43]),
])  # fmt: skip
def test_score_task_splits_prompts_into_near_equal_chunks(n, batch_size, workers, sizes):
    chunks = S._chunks(n, batch_size, workers)
    assert [b - a for a, b in chunks] == sizes
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(b == c for (_, b), (c, _) in zip(chunks, chunks[1:], strict=False))


@pytest.mark.parametrize("task_name", ["sentiment", "summarization"])
def test_score_task_on_two_workers_equals_one(tiny, task_name):
    """Same chunks, decoded two at a time on worker threads or one after the other."""
    model, tok = tiny
    task = get_task(task_name)
    examples = load_examples(task, "synthetic", "test", n=10)
    one = S.score_task(model, tok, task, examples, batch_size=4, workers=1)
    two = S.score_task(model, tok, task, examples, batch_size=4, workers=2)
    for key in ("accuracy_gen", "accuracy_ll", "macro_f1_ll", "rouge_l", "samples"):
        assert one.get(key) == two.get(key)
    assert one["score"] == two["score"]


def test_score_task_workers_read_weights_made_lazily_on_the_calling_thread(tiny):
    """A fused or loaded weight still lazy when scoring starts names the caller's stream,
    which a worker thread cannot run; score_task evaluates what the forward reads first."""
    model, tok = tiny
    task = get_task("sentiment")
    examples = load_examples(task, "synthetic", "test", n=6)
    before = S.score_task(model, tok, task, examples, batch_size=4, workers=1)
    layer = model.model.layers[0].self_attn.q_proj
    old = layer.weight
    layer.weight = old * 1.0 + mx.zeros_like(old)  # same values, lazy on this thread
    try:
        after = S.score_task(model, tok, task, examples, batch_size=4, workers=2)
    finally:
        layer.weight = old
    assert after["samples"] == before["samples"] and after["score"] == before["score"]


@pytest.mark.parametrize("tied", [False, True])
def test_last_position_logits_equal_the_full_forwards_last_row(tied):
    from helpers_train import tiny_args
    from mlx_lm.models import llama

    mx.random.seed(3)
    model = llama.Model(tiny_args(tie_word_embeddings=tied))
    mx.eval(model.parameters())
    x = mx.array([[5, 9, 2, 7, 1], [3, 3, 8, 6, 4]])
    got = S._last_logits(model, x, None)
    assert got.shape == (2, 64)
    np.testing.assert_allclose(np.array(got), np.array(model(x)[:, -1]), atol=1e-5)


def test_a_cache_that_cannot_be_trimmed_scores_labels_by_full_sequences(tiny, monkeypatch):
    """Rotating or quantised caches cannot drop the label tokens again: the labels are then
    scored as whole prompt+label sequences, with the same answers and near-equal scores."""
    model, tok = tiny
    task = get_task("classification")  # multi-token labels
    examples = load_examples(task, "synthetic", "test", n=10)
    prompts = [e["prompt"] for e in examples]
    texts, scores = S.generate_and_score_labels(model, tok, prompts, 8, task.label_names)
    trimmed = S.score_task(model, tok, task, examples, batch_size=4, workers=2)
    monkeypatch.setattr(S, "can_trim_prompt_cache", lambda cache: False)

    def no_trim(*a, **k):
        raise AssertionError("a cache that cannot be trimmed was trimmed")

    monkeypatch.setattr(S, "trim_prompt_cache", no_trim)
    texts2, scores2 = S.generate_and_score_labels(model, tok, prompts, 8, task.label_names)
    assert texts2 == texts
    np.testing.assert_allclose(scores2, scores, atol=2e-4)
    assert scores.std() > 0.1
    for workers in (1, 2):
        full = S.score_task(model, tok, task, examples, batch_size=4, workers=workers)
        for key in ("accuracy_gen", "accuracy_ll", "macro_f1_ll", "samples"):
            assert full[key] == trimmed[key]
