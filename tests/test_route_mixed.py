"""Mixed-adapter batches against per-row references (one adapter attached at a time)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers_route import params, random_adapter, tiny_model

import mlx_mixlora  # noqa: F401
from mlx_mixlora.adapter_format import save_adapter
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.lora import attach_lora, detach_lora
from mlx_mixlora.route import attach_mixed, detach_mixed, load_adapters, mixed_forward
from mlx_mixlora.route.mixed import set_routes


def _adapters(tmp_path, model):
    """Three adapters with different ranks and target sets."""
    specs = [
        dict(rank=4, targets=("q_proj", "v_proj", "down_proj"), layers=(0, 1)),
        dict(rank=2, targets=("q_proj", "up_proj"), layers=(1,)),
        dict(rank=8, targets=("k_proj", "o_proj", "gate_proj"), layers=(0,)),
    ]
    dirs = []
    for i, kw in enumerate(specs):
        cfg, w = random_adapter(model, seed=10 + i, name=f"m{i}", **kw)
        dirs.append(save_adapter(tmp_path / f"m{i}", cfg, w))
    return load_adapters(dirs)


def _reference(model, ads, toks, idx):
    rows = []
    for t, i in zip(toks, idx, strict=True):
        if i >= 0:
            attach_lora(model, ads[i].config, ads[i].weights)
        rows.append(np.array(model(mx.array([t])))[0])
        if i >= 0:
            detach_lora(model)
    return rows


@pytest.mark.parametrize("backend", ["grouped", "gather", "masked"])
def test_mixed_batch_matches_per_row_reference(tmp_path, backend):
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model)
    rng = np.random.default_rng(0)
    lens = [7, 4, 9, 7, 5, 8, 3, 6]
    toks = [rng.integers(3, 90, size=n).tolist() for n in lens]
    idx = [2, 0, -1, 1, 0, 2, 1, 0]  # unsorted, with a base row
    ref = _reference(model, ads, toks, idx)
    before = params(model)
    attach_mixed(model, ads, backend=backend)
    out = np.array(mixed_forward(model, toks, idx))
    for b, n in enumerate(lens):
        np.testing.assert_allclose(out[b, :n], ref[b], atol=1e-5)
    # all rows on one adapter (identity permutation, one group)
    same = np.array(mixed_forward(model, toks[:3], [1, 1, 1]))
    detach_mixed(model)
    ref_same = _reference(model, ads, toks[:3], [1, 1, 1])
    for b in range(3):
        np.testing.assert_allclose(same[b, : lens[b]], ref_same[b], atol=1e-5)
    after = params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("backend", ["grouped", "gather", "masked"])
def test_a_batch_all_on_the_base_is_the_bare_model_exactly(tmp_path, backend):
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model)
    toks = [[5, 6, 7, 8], [9, 10, 11, 12]]
    bare = np.array(model(mx.array(toks)))
    attach_mixed(model, ads, backend=backend)
    assert np.array_equal(np.array(mixed_forward(model, toks, [-1, -1])), bare)


def test_rows_differ_by_adapter(tmp_path):
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model)
    attach_mixed(model, ads)
    toks = [[5, 6, 7, 8]] * 4
    out = np.array(mixed_forward(model, toks, [0, 1, 2, -1]))
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(out[a] - out[b]).max() > 1e-3


def test_bad_routes_are_refused(tmp_path):
    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model)
    with pytest.raises(MixloraError, match="attach_mixed first"):
        set_routes(model, [0])
    attach_mixed(model, ads)
    with pytest.raises(MixloraError, match="out of range"):
        set_routes(model, [0, 5])
    set_routes(model, [0, 1])
    with pytest.raises(MixloraError, match="2 routes were set"):
        model(mx.array([[1, 2, 3]]))
    with pytest.raises(MixloraError, match="backend"):
        attach_mixed(tiny_model(), ads, backend="loop")


def test_mixed_generate_matches_per_row_greedy_generation(tmp_path):
    from mlx_lm.generate import generate_step

    from mlx_mixlora.route import mixed_generate

    model = tiny_model(layers=2)
    ads = _adapters(tmp_path, model)
    rng = np.random.default_rng(3)
    toks = [rng.integers(3, 90, size=n).tolist() for n in (6, 3, 9, 5)]
    idx = [1, -1, 0, 2]
    want = []
    for t, i in zip(toks, idx, strict=True):
        if i >= 0:
            attach_lora(model, ads[i].config, ads[i].weights)
        steps = generate_step(mx.array(t), model)
        want.append([int(next(steps)[0]) for _ in range(6)])
        if i >= 0:
            detach_lora(model)
    attach_mixed(model, ads)
    got = mixed_generate(model, toks, idx, max_tokens=6)
    assert got == want
    assert len({tuple(g) for g in got}) > 1


def test_the_cpu_default_masks_few_adapters_and_groups_many():
    from mlx_mixlora.route.mixed import MASKED_MAX_COLUMNS, default_backend

    if mx.default_device() != mx.cpu:
        pytest.skip("the CPU's choice")
    assert default_backend(4 * 8) == "masked"
    assert default_backend(MASKED_MAX_COLUMNS + 1) == "grouped"
