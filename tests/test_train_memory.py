"""The LM head's cross-entropy in row blocks: the same values without the whole [T, V] logits."""

from __future__ import annotations

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload must come before mlx.core)
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_mixlora.train import loss as loss_mod

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
