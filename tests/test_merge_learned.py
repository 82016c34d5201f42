"""Learned merges: the λ forward, its gradients, AdaMerging, LoraHub, --search, calibration data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_route import random_adapter
from helpers_train import CharTokenizer, tiny_model

import mlx.core as mx  # isort: skip  (mlx_mixlora, via the helpers, preloads BLAS first)
from mlx_mixlora.adapter_format import Adapter
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.lora import attach_lora, detach_lora
from mlx_mixlora.merge import merge_adapters
from mlx_mixlora.merge.adamerging import learn_coefficients
from mlx_mixlora.merge.calibration import CalibExample, read_calibration, task_calibration
from mlx_mixlora.merge.coefficients import (
    merged_weights,
    set_coefficients,
    table_for,
    weighted_adapters,
)
from mlx_mixlora.merge.learned import learn_merge
from mlx_mixlora.merge.objectives import build_batch, cross_entropy, entropy

TOK = CharTokenizer()
IDS = mx.array([[1, 5, 9, 14, 3, 22, 7, 30, 11]])


def _adapters(model, n=3, scale=0.3):
    out = []
    for i in range(n):
        cfg, w = random_adapter(
            model, seed=10 + i, targets=("q_proj", "v_proj", "down_proj"), name=f"a{i}",
            task=f"t{i}", scale=scale,
        )  # fmt: skip
        out.append(Adapter(cfg, w, f"a{i}"))
    return out


CALIB = [
    CalibExample("t0", "is a ok?", ("yes", "no"), " yes"),
    CalibExample("t0", "is b ok?", ("yes", "no"), " no"),
    CalibExample("t1", "say hi to bo", None, " hi bo"),
    CalibExample("t2", "count: 1 2", ("3", "4"), " 3"),
]


def _batch(labels_first: bool):
    conts = [TOK.encode(c.answer, add_special_tokens=False) + [2] for c in CALIB]
    return build_batch(TOK, CALIB, conts, labels_first=labels_first)


@pytest.mark.parametrize("granularity", ["task", "layer", "module"])
def test_weighted_forward_equals_the_written_linear_merge(granularity):
    model = tiny_model(0)
    ads = _adapters(model)
    table = table_for(ads, granularity, 2)
    rng = np.random.default_rng(0)
    lam = mx.array(rng.uniform(0, 1, table.shape).astype(np.float32))
    with weighted_adapters(model, ads) as layers:
        set_coefficients(layers, table, lam)
        searched = np.array(model(IDS))
    paths = sorted({p for a in ads for p in a.module_paths()})
    res = merge_adapters(ads, "linear", module_weights=merged_weights(table, lam, paths))
    attach_lora(model, res.config, res.weights)
    written = np.array(model(IDS))
    detach_lora(model)
    base = np.array(model(IDS))
    assert np.abs(searched - base).max() > 1e-2  # the adapters change the output
    assert np.abs(searched - written).max() <= 1e-5


@pytest.mark.parametrize("objective", [entropy, cross_entropy])  # distill: same forward
def test_lambda_gradients_match_finite_differences(objective):
    model = tiny_model(1)
    ads = _adapters(model)
    table = table_for(ads, "layer", 2)
    batch = _batch(labels_first=objective is entropy)
    lam0 = mx.array(np.random.default_rng(1).uniform(0.2, 0.8, table.shape).astype(np.float32))
    with weighted_adapters(model, ads) as layers:

        def f(lam):
            set_coefficients(layers, table, lam)
            return objective(model, batch)

        grad = np.array(mx.grad(f)(lam0))
        eps = 1e-2
        fd = np.zeros(table.shape)
        for idx in np.ndindex(*table.shape):
            d = np.zeros(table.shape, dtype=np.float32)
            d[idx] = eps
            fd[idx] = (f(lam0 + mx.array(d)).item() - f(lam0 - mx.array(d)).item()) / (2 * eps)
    assert np.abs(grad).max() > 1e-3  # λ matters
    np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=2e-4)


def test_identical_adapters_recover_lambdas_that_reproduce_the_adapter():
    """Two copies of one adapter, distilled from that adapter: KL = 0 exactly at λ₁ + λ₂ = 1."""
    model = tiny_model(2)
    (one,) = _adapters(model, n=1, scale=0.4)
    copies = [Adapter(one.config, one.weights, "x", ""), Adapter(one.config, one.weights, "y", "")]
    attach_lora(model, one.config, one.weights)
    own = np.array(model(IDS))
    detach_lora(model)
    calib = [
        CalibExample("x", p, None)
        for p in ("is a ok?", "say hi to bo", "count: 1 2", "why not?", "go on")
    ]
    learned = learn_coefficients(
        model, TOK, copies, calib, "task", objective="distill", steps=150, lr=0.05, init=0.1
    )
    total = float(learned.lam.sum())
    assert learned.losses[0] > 10 * learned.losses[-1]
    assert abs(total - 1.0) < 0.02, learned.lam.tolist()
    res = merge_adapters(copies, "linear", weights=learned.lam.tolist())
    attach_lora(model, res.config, res.weights)
    merged = np.array(model(IDS))
    detach_lora(model)
    assert np.abs(merged - own).max() < 0.02 * np.abs(own).max()


def test_adamerging_lowers_entropy_and_is_deterministic():
    model = tiny_model(3)
    ads = _adapters(model)
    runs = [
        learn_merge(model, TOK, ads, "adamerging", CALIB, granularity="layer", steps=8, lr=0.1)
        for _ in range(2)
    ]
    info = runs[0].info["learned"]
    assert info["loss_last"] < info["loss_first"]
    assert info["calibration_examples"] == {"t0": 2, "t1": 1, "t2": 1}
    assert np.array(info["coefficients"]).shape == (2, 3)
    assert all(0.0 <= x <= 1.0 for x in np.ravel(info["coefficients"]))
    for k, v in runs[0].weights.items():
        assert np.array_equal(np.array(v), np.array(runs[1].weights[k])), k
    assert runs[0].config.extra["merge"]["method"] == "adamerging"


def test_lorahub_finds_weights_better_than_none_and_is_seeded():
    pytest.importorskip("cma")
    model = tiny_model(4)
    ads = _adapters(model, scale=0.2)
    a = learn_merge(model, TOK, ads, "lorahub", CALIB, budget=20, seed=3)
    b = learn_merge(model, TOK, ads, "lorahub", CALIB, budget=20, seed=3)
    info = a.info["learned"]
    assert info["coefficients"] == b.info["learned"]["coefficients"]
    assert info["loss_last"] <= info["loss_first"]
    assert all(-1.5 <= x <= 1.5 for x in info["coefficients"])


def test_search_picks_the_grid_point_with_the_lowest_validation_loss():
    from mlx_mixlora.merge.search import search_merge

    model = tiny_model(5)
    ads = _adapters(model, scale=0.2)
    res = search_merge(model, TOK, ads, "task_arithmetic", CALIB)
    tried = res.info["learned"]["search"]["tried"]
    assert len(tried) == 7
    best = min(tried, key=lambda t: t["loss"])
    assert res.info["learned"]["chosen"] == {"lam": best["lam"]}
    assert res.info["lam"] == best["lam"]


def test_learned_methods_are_refused_by_the_plain_merge():
    model = tiny_model(0)
    with pytest.raises(MixloraError, match="calibration"):
        merge_adapters(_adapters(model), "adamerging")


def test_non_finite_loss_is_refused_and_the_model_restored():
    model = tiny_model(6)
    ads = _adapters(model, scale=1e25)  # finite weights whose product overflows
    before = np.array(model(IDS))
    with pytest.raises(MixloraError, match="nothing written|not finite"):
        learn_merge(model, TOK, ads, "adamerging", CALIB, steps=2)
    assert np.array_equal(np.array(model(IDS)), before)


def test_calibration_never_reads_the_test_split(monkeypatch):
    import mlx_mixlora.tasks as T

    seen = []
    real = T.load_rows

    def spy(task, source, split, **kw):
        seen.append(split)
        return real(task, source, split, **kw)

    monkeypatch.setattr(T, "load_rows", spy)
    tasks = [T.resolve_task(n) for n in ("classification", "qa", "summarization", "sentiment")]
    calib = task_calibration(tasks, "synthetic", 20, seed=0)
    assert seen and set(seen) == {"validation"}
    test_prompts = {
        e["prompt"] for t in tasks for e in real_examples(t, "test", 100) if e is not None
    }
    assert not test_prompts & {c.prompt for c in calib}


def real_examples(task, split, n):
    from mlx_mixlora.tasks import load_examples

    return load_examples(task, "synthetic", split, n=n, seed=0)


@pytest.mark.parametrize(
    "line, match",
    [
        ("not json", "not JSON"),
        ('{"task": "t0"}', "prompt"),
        ('{"prompt": "x"}', "needs 'task'"),
        ('{"prompt": "x", "task": "nope"}', "none of the adapters"),
        ('{"prompt": "x", "task": "t0", "labels": []}', "labels"),
    ],
)
def test_bad_calibration_rows_are_one_clear_error(tmp_path, line, match):
    f = tmp_path / "c.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(MixloraError, match=match):
        read_calibration(f, ["t0", "t1"])


def test_calibration_file_rows(tmp_path):
    f = tmp_path / "c.jsonl"
    rows = [
        {"prompt": "Review: fine film\nSentiment:", "task": "sentiment"},
        {"prompt": "hi", "task": "t0", "labels": ["a", "b"], "completion": " a"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = read_calibration(f, ["sentiment", "t0"])
    assert set(got[0].labels) == {"positive", "negative"}  # from the registered task
    assert got[1] == CalibExample("t0", "hi", ("a", "b"), " a")


def test_a_learned_merge_exports_to_peft_with_logit_parity(tiny_hf_llama, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from click.testing import CliRunner
    from peft import PeftModel
    from test_peft import hf_model, our_logits, random_adapter, torch_logits

    from mlx_mixlora.adapter_format import read_adapter
    from mlx_mixlora.cli import main
    from mlx_mixlora.model import load

    src = tiny_hf_llama(heads=4, kv_heads=2)
    mlx_dir = tmp_path / "mlx"
    cli = CliRunner()
    assert (
        cli.invoke(main, ["convert", str(src), "-o", str(mlx_dir), "--dtype", "float32"]).exit_code
        == 0
    )
    dirs = [
        random_adapter(mlx_dir, tmp_path / "a", rank=4, layers=(0, 1)),
        random_adapter(mlx_dir, tmp_path / "b", rank=2, layers=(1,)),
    ]
    ads = [read_adapter(d) for d in dirs]
    ads[1].name = "b"
    model, tok = load(mlx_dir)
    calib = [
        CalibExample("rand", "w1 w2 w3", ("w4", "w5")),
        CalibExample("rand", "w7 w8", None, " w9 w10"),
    ]
    res = learn_merge(model, tok, ads, "adamerging", calib, granularity="module", steps=4, lr=0.2)
    merged = res.save(tmp_path / "merged")
    out = tmp_path / "peft"
    r = cli.invoke(main, ["export", "peft", str(merged), "-o", str(out), "--base-model-id", "t/l"])
    assert r.exit_code == 0, r.output
    peft_model = PeftModel.from_pretrained(hf_model(src), str(out)).eval()
    ours, theirs = our_logits(mlx_dir, merged), torch_logits(peft_model)
    assert np.abs(ours - torch_logits(hf_model(src))).max() > 1e-2
    assert np.abs(ours - theirs).max() <= 1e-4


def test_each_coefficient_reaches_the_layer_and_module_it_names():
    model = tiny_model(0)
    ads = _adapters(model)  # q_proj, v_proj, down_proj at layers 0 and 1
    lam = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) / 100
    paths = sorted({p for a in ads for p in a.module_paths()})
    for gran, expect in (
        ("task", lambda layer, t: lam[0, 0]),
        ("layer", lambda layer, t: lam[layer, 0]),
        ("module", lambda layer, t: lam[layer, t]),
    ):
        table = table_for(ads, gran, 2)
        assert table.targets == ("q_proj", "v_proj", "down_proj")
        given = {"task": lam[0, 0], "layer": lam[:, 0], "module": lam}[gran]
        got = merged_weights(table, mx.array(given), paths)
        for p in paths:
            layer, target = int(p.split(".")[2]), p.rsplit(".", 1)[1]
            t = table.targets.index(target)
            np.testing.assert_allclose(got[p], expect(layer, t), err_msg=f"{gran} {p}")


def _dense(ad, path):
    b, a = ad.factors(path)
    return np.array(b) @ np.array(a)


def test_ties_masks_match_a_numpy_reference_and_keep_a_lone_adapter():
    from mlx_mixlora.merge.masked import ties_masked

    model = tiny_model(7)
    ads = _adapters(model, n=2)
    masked, err = ties_masked(ads, 0.5, rank=64)  # full rank: the masks alone are compared
    assert err < 1e-5
    for path in ads[0].module_paths():
        d = np.stack([_dense(a, path) for a in ads])
        kept = np.zeros_like(d)
        for i in range(2):
            k = int(0.5 * d[i].size)
            top = np.argsort(-np.abs(d[i]).ravel())[:k]
            kept[i].flat[top] = d[i].flat[top]
        elected = np.sign(kept.sum(axis=0))
        want = np.where(np.sign(kept) == elected, kept, 0.0)
        for i in range(2):
            np.testing.assert_allclose(_dense(masked[i], path), want[i], atol=1e-5)
    (alone,), err = ties_masked(ads[:1], 1.0)  # default rank 2r, nothing trimmed or outvoted
    assert err < 1e-5
    for path in ads[0].module_paths():
        np.testing.assert_allclose(_dense(alone, path), _dense(ads[0], path), atol=1e-5)


def test_adamerging_plus_plus_learns_over_the_masked_deltas():
    model = tiny_model(8)
    ads = _adapters(model)
    res = learn_merge(model, TOK, ads, "adamerging", CALIB, steps=3, masks="ties", density=0.3)
    info = res.info["learned"]
    assert info["masks"] == "ties" and info["density"] == 0.3 and info["mask_rel_error"] < 0.5
    assert res.config.rank == 3 * 2 * 4  # three masked adapters at 2r each, side by side
