"""The training step's memory levers: the blocked LM-head logsumexp and the queue bound."""

from __future__ import annotations

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload must come before mlx.core)
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers_train import CharTokenizer, tiny_model

from mlx_mixlora.train import TrainConfig, train_adapter
from mlx_mixlora.train import loss as loss_mod
from mlx_mixlora.train import memory

# isort: on


def _whole(h: mx.array, w: mx.array, labels: mx.array) -> mx.array:
    """Reference CE: the whole [T, V] logits, MLX's own logsumexp."""
    logits = h @ w.T
    picked = mx.take_along_axis(logits, labels[:, None], axis=-1).squeeze(-1)
    return mx.logsumexp(logits, axis=-1) - picked


@pytest.mark.parametrize("chunk", [1 << 22, 64 * 7, 64])  # one block, 7 rows a block, 1 row
def test_blocked_head_cross_entropy_equals_the_whole_logits(monkeypatch, chunk):
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", chunk)
    mx.random.seed(3)
    h = mx.random.normal((23, 16))
    w = mx.random.normal((64, 16)) * 0.5
    labels = mx.random.randint(0, 64, (23,))
    weights = mx.random.uniform(shape=(23,))
    model = nn.Module()
    model.args = type("A", (), {"tie_word_embeddings": False})()
    model.lm_head = nn.Linear(16, 64, bias=False)
    model.lm_head.weight = w

    def ours(h):
        return (loss_mod.cross_entropy_rows(model, h, labels) * weights).sum()

    def ref(h):
        return (_whole(h, w, labels) * weights).sum()

    (a, ga), (b, gb) = mx.value_and_grad(ours)(h), mx.value_and_grad(ref)(h)
    assert abs(a.item() - b.item()) <= 1e-5 * abs(b.item())
    np.testing.assert_allclose(np.array(ga), np.array(gb), rtol=1e-5, atol=1e-6)
    blocks = loss_mod.row_blocks(23, 64)
    assert blocks[0][0] == 0 and blocks[-1][1] == 23
    assert all(b - a <= max(1, chunk // 64) for a, b in blocks)


def test_one_block_is_bit_identical_to_the_unblocked_logsumexp():
    """The demo's vocab fits one block: the blocked path must not move a single bit."""
    mx.random.seed(4)
    h, w = mx.random.normal((40, 32)), mx.random.normal((128, 32))
    assert len(loss_mod.row_blocks(40, 128)) == 1
    cot = mx.random.normal((40,))
    direct = mx.value_and_grad(lambda h: (loss_mod.logsumexp_keep(h @ w.T)[0] * cot).sum())(h)
    blocked = mx.value_and_grad(lambda h: (loss_mod.head_logsumexp(w)(h)[0] * cot).sum())(h)
    assert np.array_equal(np.array(direct[0]), np.array(blocked[0]))
    assert np.array_equal(np.array(direct[1]), np.array(blocked[1]))


def _train(tmp_path, name):
    model = tiny_model(0)
    rows = [{"prompt": f"{i} + 1 =", "completion": f" {i + 1}"} for i in range(16)]
    cfg = TrainConfig(iters=3, batch_size=4, rank=4, seed=0)
    return train_adapter((model, CharTokenizer()), rows, tmp_path / name, cfg, progress=False)


def test_queue_bound_is_restored_and_changes_no_result(tmp_path, monkeypatch):
    before = mx.get_memory_limit()
    seen = []
    real = mx.set_memory_limit
    monkeypatch.setattr(memory.mx, "set_memory_limit", lambda n: seen.append(n) or real(n))
    bounded = _train(tmp_path, "bounded")
    assert mx.get_memory_limit() == before
    if mx.default_device() == mx.cpu:
        assert len(seen) == 3 and seen[-1] == before  # at rest, after step 1, restored
        assert 0 < seen[0] <= seen[1] < before
    monkeypatch.setenv(memory.ENV_OFF, "1")
    seen.clear()
    free = _train(tmp_path, "free")
    assert seen == [] and mx.get_memory_limit() == before
    assert [h["loss"] for h in bounded.history] == [h["loss"] for h in free.history]


def test_queue_bound_is_restored_when_training_fails(tmp_path):
    before = mx.get_memory_limit()
    model = tiny_model(0)
    rows = [{"prompt": "1 + 1 =", "completion": " 2"}] * 8
    cfg = TrainConfig(iters=2, batch_size=4, rank=4, lr=1e30, clip_grad=None)
    with pytest.raises(Exception, match="not finite"):
        train_adapter((model, CharTokenizer()), rows, tmp_path / "x", cfg, progress=False)
    assert mx.get_memory_limit() == before
