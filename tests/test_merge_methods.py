"""Every merge method against a plain NumPy reference of its math (fp32, tolerance 1e-5)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers_merge import (
    assert_close,
    make_adapter,
    np_delta,
    np_mask,
    np_ties,
    np_topk_mask,
    np_weighted,
)

from mlx_mixlora.adapter_format import module_path
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.merge import METHODS, merge_adapters, svd
from mlx_mixlora.merge.kernels import merge_slices, trim_thresholds, zero_entries
from mlx_mixlora.merge.svd import randomized_svd

Q0 = module_path(0, "q_proj")


@pytest.fixture
def three():
    """Three adapters: different ranks, target sets, an rsLoRA one and a rank_pattern."""
    return [
        make_adapter(1, rank=4, targets=("q_proj", "v_proj"), name="cls"),
        make_adapter(
            2, rank=8, targets=("q_proj", "k_proj"), name="qa", rank_pattern={Q0: 2}, alpha=4.0
        ),
        make_adapter(3, rank=2, targets=("q_proj", "v_proj", "o_proj"), name="sum", rslora=True),
    ]


def _ds(adapters, path):
    """Per-adapter reference deltas of `path` and the indices of adapters that have it."""
    present = [i for i, a in enumerate(adapters) if path in a.module_paths()]
    return [np_delta(adapters[i], path) for i in present], present


def _all_paths(adapters):
    return sorted({p for a in adapters for p in a.module_paths()})


def test_linear_is_exact_concatenation(three):
    ws = [0.5, -0.3, 1.2]
    res = merge_adapters(three, "linear", weights=ws)
    for p in _all_paths(three):
        ds, present = _ds(three, p)
        ref = sum(ws[i] * d for i, d in zip(present, ds, strict=True))
        assert_close(res.delta(p), ref)
        # exact at rank Σr of the adapters present there
        assert res.weights[f"{p}.lora_a"].shape[0] == sum(
            three[i].config.rank_of(p) for i in present
        )
    assert res.rel_error == 0.0
    # a module in targets × layers that no adapter has (k_proj is only in "qa", o_proj only in "sum")
    assert set(res.config.module_paths()) == {k.rsplit(".", 1)[0] for k in res.weights}


def test_task_arithmetic_scales_by_lambda(three):
    a = merge_adapters(three, "task_arithmetic", lam=0.7)
    b = merge_adapters(three, "linear", weights=[0.7, 0.7, 0.7])
    for p in _all_paths(three):
        assert_close(a.delta(p), np.array(b.delta(p)))
    ds, _ = _ds(three, Q0)
    assert_close(a.delta(Q0), 0.7 * sum(ds))


def test_layer_wise_ranges_by_name_and_even_split(three):
    res = merge_adapters(three, "layer_wise", layer_ranges="qa:0-0,sum:1", weights=[1, 2, 3])
    assert_close(res.delta(Q0), 2 * np_delta(three[1], Q0))
    q1 = module_path(1, "q_proj")
    assert_close(res.delta(q1), 3 * np_delta(three[2], q1))
    # v_proj of layer 0 belongs to "qa", which has no v_proj: ΔW is exactly zero there
    assert float(mx.abs(res.delta(module_path(0, "v_proj"))).max()) == 0.0
    even = merge_adapters(three[:2], "layer_wise", layer_ranges="even")
    assert_close(even.delta(Q0), np_delta(three[0], Q0))
    assert_close(even.delta(q1), np_delta(three[1], q1))


def test_per_layer_weight_vectors(three):
    res = merge_adapters(three, "linear", layer_weights="0=1,0,0.5;1=0,2,0")
    ds, _ = _ds(three, Q0)
    assert_close(res.delta(Q0), ds[0] + 0.5 * ds[2])
    q1 = module_path(1, "q_proj")
    assert_close(res.delta(q1), 2 * np_delta(three[1], q1))


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_svd_is_optimal_truncation(three, rank):
    ws = [1.0, 0.5, -1.0]
    res = merge_adapters(three, "svd", weights=ws, rank=rank)
    num = den = 0.0
    for p in _all_paths(three):
        ds, present = _ds(three, p)
        ref = sum(ws[i] * d for i, d in zip(present, ds, strict=True))
        u, s, vt = np.linalg.svd(ref)
        best = (u[:, :rank] * s[:rank]) @ vt[:rank]
        assert_close(res.delta(p), best)
        if p in res.errors:
            want = np.sqrt((s[rank:] ** 2).sum() / (s**2).sum())
            assert abs(res.errors[p] - want) < 1e-4
            num, den = num + (s[rank:] ** 2).sum(), den + (s**2).sum()
    assert abs(res.rel_error - np.sqrt(num / den)) < 1e-4
    assert res.config.rank <= rank


@pytest.mark.parametrize("elect", ["total", "frequency"])
@pytest.mark.parametrize("density", [0.2, 0.7, 1.0])
def test_ties_dense_matches_reference(three, elect, density):
    ws = [0.6, 1.3, -0.4]
    res = merge_adapters(
        three, "ties", weights=ws, density=density, majority_sign=elect, output="deltas"
    )
    for p in _all_paths(three):
        ds, present = _ds(three, p)
        ref = np_ties(ds, [ws[i] for i in present], density, elect)
        assert_close(res.deltas[p], ref)


def test_ties_without_a_density_is_mergekits_default_of_one(three):
    """No --density: no trim (mergekit's density 1.0), still sign election + disjoint mean."""
    ws = [0.6, 1.3, -0.4]
    plain = merge_adapters(three, "ties", weights=ws, output="deltas")
    one = merge_adapters(three, "ties", weights=ws, density=1.0, output="deltas")
    lin = merge_adapters(three, "linear", weights=ws, output="deltas")
    for p in _all_paths(three):
        assert_close(plain.deltas[p], one.deltas[p])
    # the sign election still runs: where adapters overlap, the result is not their weighted sum
    diff = [np.abs(np.array(plain.deltas[p]) - np.array(lin.deltas[p])).max() for p in plain.deltas]
    assert max(diff) > 1e-2
    for p in _all_paths(three):
        ds, present = _ds(three, p)
        assert_close(plain.deltas[p], np_ties(ds, [ws[i] for i in present], 1.0, "total"))


@pytest.mark.parametrize("method", ["ties", "magnitude_prune", "dare_ties"])
def test_trim_with_many_exact_ties_matches_reference(method):
    """Factors from {-1, 1}: ΔW entries tie massively at the threshold."""
    rng = np.random.default_rng(5)
    ads = []
    for seed in range(3):
        ad = make_adapter(seed, targets=("q_proj",))
        for key, v in ad.weights.items():
            ad.weights[key] = mx.array(rng.choice([-1.0, 1.0], size=v.shape).astype(np.float32))
        ads.append(ad)
    kw = {"drop": 0.4, "mask_fn": _mask_fn} if method == "dare_ties" else {}
    res = merge_adapters(ads, method, density=0.3, output="deltas", weights=[1, 2, 3], **kw)
    ds, _ = _ds(ads, Q0)
    assert len(np.unique(np.abs(ds[0]))) <= 5
    if method == "magnitude_prune":
        ref = np_weighted(ds, [1, 2, 3], 0.3)
    else:
        keep = [np_mask(Q0, i, ds[0].shape) for i in range(3)] if method == "dare_ties" else None
        ref = np_ties(ds, [1, 2, 3], 0.3, keep=keep, scale=1 / 0.6 if keep else 1.0)
    assert_close(res.deltas[Q0], ref)


def test_magnitude_prune_matches_reference(three):
    ws = [1.0, 0.5, 2.0]
    res = merge_adapters(three, "magnitude_prune", weights=ws, density=0.3, output="deltas")
    for p in _all_paths(three):
        ds, present = _ds(three, p)
        assert_close(res.deltas[p], np_weighted(ds, [ws[i] for i in present], 0.3))


def _mask_fn(key, i, shape):
    return mx.array(np_mask(key, i, shape))


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_with_given_masks_matches_reference(three, method):
    ws = [0.9, 0.4, 1.1]
    res = merge_adapters(three, method, weights=ws, drop=0.4, mask_fn=_mask_fn, output="deltas")
    for p in _all_paths(three):
        ds, present = _ds(three, p)
        keep = [np_mask(p, i, ds[0].shape) for i in present]
        wsp = [ws[i] for i in present]
        ref = (
            np_ties(ds, wsp, keep=keep, scale=1 / 0.6)
            if method == "dare_ties"
            else np_weighted(ds, wsp, keep=keep, scale=1 / 0.6)
        )
        assert_close(res.deltas[p], ref)


def test_dare_ties_with_density_trims_after_drop(three):
    res = merge_adapters(
        three, "dare_ties", drop=0.4, density=0.3, mask_fn=_mask_fn, output="deltas"
    )
    ds, present = _ds(three, Q0)
    keep = [np_mask(Q0, i, ds[0].shape) for i in present]
    assert_close(res.deltas[Q0], np_ties(ds, [1, 1, 1], 0.3, keep=keep, scale=1 / 0.6))


def test_dare_seeded_masks_are_reproducible_and_drop_p(three):
    a = merge_adapters(three[:1], "dare_linear", drop=0.3, seed=5, output="deltas")
    b = merge_adapters(three[:1], "dare_linear", drop=0.3, seed=5, output="deltas")
    c = merge_adapters(three[:1], "dare_linear", drop=0.3, seed=6, output="deltas")
    assert np.array_equal(np.array(a.deltas[Q0]), np.array(b.deltas[Q0]))
    assert not np.array_equal(np.array(a.deltas[Q0]), np.array(c.deltas[Q0]))
    d = np_delta(three[0], Q0)
    kept = np.array(a.deltas[Q0]) != 0
    assert abs(kept.mean() - 0.7) < 0.03  # 4096 entries: 3 σ ≈ 0.021
    assert_close(np.array(a.deltas[Q0])[kept], d[kept] / 0.7)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("ties", {"density": 0.5}),
        ("dare_linear", {"drop": 0.3}),
        ("magnitude_prune", {"density": 0.4}),
    ],
)
def test_dense_methods_compress_by_randomized_svd(three, method, kw):
    dense = merge_adapters(three, method, output="deltas", **kw)
    low = merge_adapters(three, method, rank=6, **kw)
    for p in _all_paths(three):
        d = np.array(dense.deltas[p], dtype=np.float64)
        got = np.array(low.delta(p), dtype=np.float64)
        err = np.linalg.norm(d - got) / np.linalg.norm(d)
        s = np.linalg.svd(d, compute_uv=False)
        best = np.sqrt((s[6:] ** 2).sum() / (s**2).sum())
        assert abs(low.errors[p] - err) < 1e-4  # the reported error is the real one
        assert err <= best * (1 + 1e-4) + 1e-6  # optimal to ~1e-4 with the default iterations
    assert low.config.rank == 6


def _excess_over_optimal(d: np.ndarray, err: float, rank: int) -> float:
    s = np.linalg.svd(d.astype(np.float64), compute_uv=False)
    return err / np.sqrt((s[rank:] ** 2).sum() / (s**2).sum()) - 1


def test_a_sketch_from_the_adapters_row_spaces_beats_a_gaussian_one():
    """TIES-trimmed sum of three rank-8 deltas: the A factors hold most of its row space."""
    rng = np.random.default_rng(0)
    bs = [rng.standard_normal((96, 8)).astype(np.float32) for _ in range(3)]
    as_ = [rng.standard_normal((8, 128)).astype(np.float32) for _ in range(3)]
    d = np.stack([b @ a for b, a in zip(bs, as_, strict=True)])
    thr, excess = trim_thresholds(mx.array(d), 0.2)
    merged = merge_slices(zero_entries(mx.array(d), excess), [0.5, 0.3, 0.2], "total", thr)
    start = mx.array(np.concatenate(as_).T)  # [in, 24]
    key = mx.random.key(3)
    m = np.array(merged)
    for iters in (0, 1):
        gauss = randomized_svd(merged, 8, 16, iters, key)[2]
        ours = randomized_svd(merged, 8, 16, iters, key, start=start)[2]
        assert _excess_over_optimal(m, ours, 8) < _excess_over_optimal(m, gauss, 8) / 3
    # with the default two iterations it is optimal to float precision
    assert (
        _excess_over_optimal(m, randomized_svd(merged, 8, start=start, power_iters=2)[2], 8) < 1e-5
    )


@pytest.mark.parametrize("given, width", [(24, 24), (4, 24), (40, 40), (200, 96)])
def test_the_sketch_keeps_every_start_column_and_fills_the_rest(given, width):
    """Width: rank + oversample, or all the start columns, at most min(out, in) = 96."""
    d = mx.random.normal((96, 200), key=mx.random.key(0))
    start = mx.random.normal((200, given), key=mx.random.key(1))
    b, a, err, _ = randomized_svd(d, 8, 16, 0, mx.random.key(2), start=start)
    assert b.shape == (96, 8) and a.shape == (8, 200) and 0.0 < err < 1.0
    # the kept subspace is [start, gaussian][:, :width]: rebuild it and compare errors
    cols = [np.array(start)]
    if given < width:
        cols.append(np.array(mx.random.normal((200, width - given), key=mx.random.key(2))))
    omega = np.concatenate(cols, axis=1)[:, :width]
    q, _ = np.linalg.qr(np.array(d) @ omega)
    s = np.linalg.svd(q.T @ np.array(d), compute_uv=False)
    ref = np.sqrt(max(0.0, 1 - (s[:8] ** 2).sum() / (np.array(d) ** 2).sum()))
    assert abs(err - ref) < 1e-4


def test_dense_default_rank_is_sum_of_ranks(three):
    res = merge_adapters(three, "ties", density=0.5)
    assert res.config.rank == 4 + 8 + 2


def _factor_ref(adapters, p, ws, fn):
    """PEFT's factor space: A's combined with √|w·s|·sign, B's with √|w·s|."""
    present = [i for i, a in enumerate(adapters) if p in a.module_paths()]
    sc = [ws[i] * adapters[i].config.scale_of(p) for i in present]
    wa = [np.sqrt(abs(x)) * np.sign(x) for x in sc]
    wb = [np.sqrt(abs(x)) for x in sc]
    a = fn(
        [np.array(adapters[i].weights[f"{p}.lora_a"], np.float64) for i in present], wa, ".lora_a"
    )
    b = fn(
        [np.array(adapters[i].weights[f"{p}.lora_b"], np.float64) for i in present], wb, ".lora_b"
    )
    return b @ a


@pytest.mark.parametrize("method", ["factor_linear", "factor_ties", "factor_magnitude_prune"])
def test_factor_space_matches_reference(method):
    ads = [make_adapter(s, rank=4, targets=("q_proj", "v_proj")) for s in (11, 12, 13)]
    ads[2].config.alpha = 2.0
    ws = [0.5, 1.5, -0.7]
    kw = {} if method == "factor_linear" else {"density": 0.5}
    res = merge_adapters(ads, method, weights=ws, **kw)
    fn = {
        "factor_linear": lambda ts, w, _k: np_weighted(ts, w),
        "factor_ties": lambda ts, w, _k: np_ties(ts, w, 0.5),
        "factor_magnitude_prune": lambda ts, w, _k: np_weighted(ts, w, 0.5),
    }[method]
    for p in _all_paths(ads):
        assert_close(res.delta(p), _factor_ref(ads, p, ws, fn))
    assert res.config.rank == 4


def topk_mask(d: mx.array, density: float, select: str) -> mx.array:
    """What trim keeps: |d| >= each slice's threshold, less the ties beyond the quota."""
    thr, excess = trim_thresholds(d, density, select)
    t = mx.array(thr).reshape((d.shape[0],) + (1,) * (d.ndim - 1))
    return zero_entries(mx.where(mx.abs(d) >= t, 1.0, 0.0), excess) != 0


def combine(d, keep, w, elect, scale=1.0, kernel="compiled"):
    """`merge_slices` with a keep-mask, given as DARE-style draws (kept: 0 < 1)."""
    draws = mx.where(mx.array(keep), 0.0, 1.0)
    return merge_slices(mx.array(d), w, elect, None, scale, kernel, uniform=draws, keep_below=1.0)


def test_topk_mask_exact_count_with_ties_and_both_selectors():
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((3, 40, 50)), 1).astype(np.float32)  # many exact ties
    for density in (0.0, 0.13, 0.5, 0.99, 1.0):
        want = np.stack([np_topk_mask(x[i], density) for i in range(3)])
        for sel in ("numpy", "mlx"):
            got = np.array(topk_mask(mx.array(x), density, select=sel))
            assert got.sum(axis=(1, 2)).tolist() == [int(density * 2000)] * 3
            assert np.array_equal(got, want)


def test_combine_compiled_matches_reference_with_zero_and_negative_weights():
    rng = np.random.default_rng(1)
    d = rng.standard_normal((4, 30, 20)).astype(np.float32)
    keep = rng.random(d.shape) < 0.5
    w = [0.5, -1.0, 0.0, 2.0]
    got = combine(d, keep, w, "total", scale=2.0, kernel="compiled")
    assert_close(got, np_ties(list(d), w, keep=keep, scale=2.0))
    got = combine(d, keep, w, None, kernel="compiled")
    assert_close(got, np_weighted(list(d), w, keep=keep))


def test_zero_weight_adapter_takes_no_part_in_ties(three):
    a = merge_adapters(three, "ties", weights=[1.0, 0.0, 1.0], density=0.5, output="deltas")
    b = merge_adapters([three[0], three[2]], "ties", density=0.5, output="deltas")
    assert_close(a.deltas[Q0], np.array(b.deltas[Q0]))


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"method": "nope"}, "unknown merge method"),
        ({"method": "magnitude_prune"}, "needs a density"),
        ({"method": "dare_linear"}, "needs a drop"),
        ({"method": "dare_linear", "drop": 1.0}, "drop probability"),
        ({"method": "ties", "density": 1.5}, "density must be"),
        ({"method": "linear", "weights": [1, 2]}, "got 2 weights for 3 adapters"),
        ({"method": "linear", "weights": "1,x,2"}, "not comma-separated"),
        ({"method": "layer_wise"}, "needs layer ranges"),
        ({"method": "layer_wise", "layer_ranges": "cls:0-1,qa:1-1"}, "more than one layer range"),
        ({"method": "layer_wise", "layer_ranges": "cls:0-5"}, "past the last layer"),
        ({"method": "layer_wise", "layer_ranges": "zzz:0-1"}, "unknown adapter 'zzz'"),
        ({"method": "layer_wise", "layer_ranges": "cls0-1"}, "bad layer range"),
        ({"method": "factor_ties", "density": 0.5}, "needs adapters of one rank"),
        ({"method": "svd", "rank": 0}, "rank must be"),
        ({"method": "ties", "density": 0.5, "oversample": -1}, "oversample"),
        ({"method": "linear", "output": "dense"}, "output must be"),
    ],
)
def test_bad_options_raise_one_clear_error(three, kwargs, msg):
    with pytest.raises(MixloraError, match=msg):
        merge_adapters(three, **kwargs)


def test_adapters_for_different_bases_are_refused():
    a = make_adapter(1)
    b = make_adapter(2, base={**make_adapter(2).config.base_model, "fingerprint": "beef"})
    a.config.base_model["fingerprint"] = "cafe"
    with pytest.raises(MixloraError, match="different base"):
        merge_adapters([a, b], "linear")
    c = make_adapter(3, base={"hidden_size": 128, "num_hidden_layers": 2})
    with pytest.raises(MixloraError, match="different base"):
        merge_adapters([make_adapter(1), c], "linear")


def test_shape_mismatch_is_refused():
    a = make_adapter(1)
    b = make_adapter(2)
    b.weights[f"{Q0}.lora_a"] = mx.zeros((4, 32))
    with pytest.raises(MixloraError, match="different bases"):
        merge_adapters([a, b], "linear")


@pytest.mark.skipif(
    not (hasattr(mx.fast, "metal_kernel") and mx.metal.is_available()), reason="needs Metal"
)
@pytest.mark.parametrize("elect", ["total", "frequency"])
def test_metal_kernel_matches_compiled(elect):
    rng = np.random.default_rng(2)
    d = mx.array(rng.standard_normal((3, 64, 96)).astype(np.float32))
    keep = mx.array(rng.random((3, 64, 96)) < 0.4)
    w = [0.5, -1.0, 2.0]
    a = combine(d, keep, w, elect, kernel="metal")
    b = combine(d, keep, w, elect, kernel="compiled")
    assert_close(a, np.array(b))


def test_result_records_only_the_options_its_method_reads(three):
    assert merge_adapters(three, "linear", lam=0.5).info["lam"] is None
    assert merge_adapters(three, "task_arithmetic", lam=0.5).config.extra["merge"]["lam"] == 0.5
    ties = merge_adapters(three, "ties", density=0.5, majority_sign="frequency")
    assert ties.config.extra["merge"]["majority_sign"] == "frequency"
    prune = merge_adapters(three, "magnitude_prune", density=0.5, majority_sign="frequency")
    assert "majority_sign" not in prune.config.extra["merge"]
    assert prune.config.extra["merge"]["density"] == 0.5


def test_registry_kinds_and_the_demo_line_up():
    """Every method is complete for its kind; the demo merges the table's `demo` rows, in order."""
    from mlx_mixlora.demo.pipeline import MERGES

    for name, m in METHODS.items():
        assert m.kind in ("exact", "dense", "factor", "learned"), name
        assert (m.combine is not None) == (m.kind in ("dense", "factor")), name
        assert m.weights is None or m.kind == "exact", name
    assert METHODS["weighted"] is METHODS["linear"]
    twins = {f"factor_{n}" for n, m in METHODS.items() if m.peft.endswith("_svd")}
    assert twins < set(METHODS) and len(twins) == 4
    assert MERGES == (
        ("merge:linear", "linear", {"weights": "mean"}),
        ("merge:task_arithmetic", "task_arithmetic", {}),
        ("merge:layer_wise", "layer_wise", {"layer_ranges": "even", "weights": None}),
        ("merge:ties", "ties", {"density": 0.2}),
        ("merge:dare_ties", "dare_ties", {"drop": 0.5}),
        ("merge:adamerging", "adamerging", {"granularity": "layer"}),
        ("merge:lorahub", "lorahub", {}),
        (
            "merge:adamerging-distill",
            "adamerging",
            {"objective": "distill", "granularity": "module"},
        ),
        ("merge:task_arithmetic-search", "task_arithmetic", {"search": True}),
        ("merge:ties-search", "ties", {"search": True}),
        ("merge:dare_ties-search", "dare_ties", {"search": True}),
    )


@pytest.mark.parametrize("case", ["gaussian", "ill_conditioned", "rank_deficient", "zero"])
def test_thin_qr_is_orthonormal_and_reproduces_its_input(case, monkeypatch):
    """CholeskyQR2 where it is accurate, Householder where the Gram matrix is (near) singular."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal((512, 24))
    if case == "ill_conditioned":  # cond 3e5: one Cholesky pass leaves Q ~1e-5 off orthonormal
        u, _ = np.linalg.qr(y)
        v, _ = np.linalg.qr(rng.standard_normal((24, 24)))
        y = (u * np.logspace(0, -5.5, 24)) @ v.T
    elif case == "rank_deficient":
        y[:, 12:] = y[:, :12] @ rng.standard_normal((12, 12))
    elif case == "zero":
        y[:] = 0.0
    householder, used = mx.linalg.qr, []

    def counting(*args, **kwargs):
        used.append(1)
        return householder(*args, **kwargs)

    monkeypatch.setattr(mx.linalg, "qr", counting)
    q, r = svd._qr(mx.array(y.astype(np.float32)))
    q, r = np.array(q, dtype=np.float64), np.array(r, dtype=np.float64)
    assert bool(used) == (case in ("rank_deficient", "zero"))
    assert q.shape == (512, 24) and r.shape == (24, 24)
    assert np.abs(q @ r - y).max() < 1e-5 * max(1.0, np.abs(y).max())
    assert np.abs(q.T @ q - np.eye(24)).max() < 1e-6
