"""Issue 18, category 1: non-finite numbers are refused, never written (options and tensors)."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401
from helpers_train import save_model_dir, tiny_model
from test_bad_inputs import assert_clean_failure, make_adapter, run

from mlx_mixlora.adapter_format import WEIGHTS_FILE, load_adapter


@pytest.fixture
def model_dir(tmp_path):
    return save_model_dir(tmp_path / "base", tiny_model(0))


def poison(adapter_dir, key_suffix="q_proj.lora_a", value=float("nan"), shape=None):
    """Rewrite one tensor of an adapter (NaN at [0, 0], or a new shape); returns its name."""
    f = adapter_dir / WEIGHTS_FILE
    w = dict(mx.load(str(f)))
    key = next(k for k in sorted(w) if k.endswith(key_suffix))
    a = np.array(w[key])
    if shape is not None:
        a = np.zeros(shape, dtype=np.float32)
    else:
        a[0, 0] = value
    w[key] = mx.array(a)
    mx.save_safetensors(str(f), w)
    return key


@pytest.mark.parametrize("lam", ["nan", "inf", "-inf"])
def test_merge_lam_not_finite(tmp_path, model_dir, lam):
    a = make_adapter(tmp_path / "a", model_dir, name="a")
    b = make_adapter(tmp_path / "b", model_dir, seed=1, name="b")
    for extra in ([], ["--into-base", model_dir]):
        out = tmp_path / "m"
        result = run("merge", a, b, "-m", "task_arithmetic", "--lam", lam, "-o", out, *extra)
        assert_clean_failure(result, "--lam", "finite", out=out)


def test_gate_train_lr_not_finite_or_negative(tmp_path, routing_dirs):  # noqa: F811
    model, ads = routing_dirs
    for lr in ("nan", "-1", "0", "inf"):
        out = tmp_path / "g"
        result = run("gate", "train", "--model", model, "--adapters", *ads, "-o", out, "--lr", lr)
        assert_clean_failure(result, "--lr", out=out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_adapter_refused_everywhere(tmp_path, model_dir, bad):
    ad = make_adapter(tmp_path / "ad", model_dir)
    good = make_adapter(tmp_path / "good", model_dir, seed=1, name="b")
    key = poison(ad, value=bad)
    out = tmp_path / "o"
    cases = [
        ("merge", ad, good, "-m", "linear", "-o", out),
        ("merge", ad, good, "-m", "linear", "--into-base", model_dir, "-o", out),
        ("export", "hf", model_dir, "--adapter", ad, "-o", out),
        ("export", "peft", ad, "-o", out),
    ]
    for args in cases:
        assert_clean_failure(run(*args), key, "NaN or infinite", out=out)
    result = run("generate", "--model", model_dir, "--adapters", ad, good, "--prompt", "abc")
    assert_clean_failure(result, key, "NaN or infinite")


def _peft_with(tmp_path, model_dir, bad):
    """A PEFT dir exported from a good adapter, then one tensor made non-finite."""
    ad = make_adapter(tmp_path / "src", model_dir)
    peft = tmp_path / "peft"
    assert run("export", "peft", ad, "-o", peft).exit_code == 0
    f = peft / "adapter_model.safetensors"
    w = dict(mx.load(str(f)))
    key = sorted(w)[0]
    a = np.array(w[key])
    a[0, 0] = bad
    w[key] = mx.array(a)
    mx.save_safetensors(str(f), w)
    return peft


def _mlx_lm_dir(tmp_path, scale=2.0, bad=None):
    d = tmp_path / "mlxlm"
    d.mkdir()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 4)).astype(np.float32)
    if bad is not None:
        a[0, 0] = bad
    w = {
        "model.layers.0.self_attn.q_proj.lora_a": mx.array(a),
        "model.layers.0.self_attn.q_proj.lora_b": mx.array(np.ones((4, 64), np.float32)),
    }
    mx.save_safetensors(str(d / "adapters.safetensors"), w)
    cfg = {"fine_tune_type": "lora", "lora_parameters": {"rank": 4, "scale": scale}}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


def test_import_refuses_non_finite_tensors(tmp_path, model_dir):
    out = tmp_path / "ours"
    peft = _peft_with(tmp_path, model_dir, float("nan"))
    assert_clean_failure(run("import", "peft", peft, "-o", out), "NaN or infinite", out=out)
    mlxlm = _mlx_lm_dir(tmp_path, bad=float("inf"))
    assert_clean_failure(run("import", "mlx-lm", mlxlm, "-o", out), "NaN or infinite", out=out)


@pytest.mark.parametrize("scale", [float("nan"), -2.0, 0.0, float("inf")])
def test_import_mlx_lm_scale_not_positive_finite(tmp_path, scale):
    d = _mlx_lm_dir(tmp_path, scale=scale)
    out = tmp_path / "ours"
    assert_clean_failure(run("import", "mlx-lm", d, "-o", out), "lora_parameters.scale", out=out)


def test_lora_a_wider_than_the_base(tmp_path, model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    key = poison(ad, shape=(4, 65))
    out = tmp_path / "o"
    for args in (("merge", ad, ad, "-m", "linear", "-o", out), ("export", "peft", ad, "-o", out)):
        assert_clean_failure(run(*args), key, "[4, 65]", "input size 64", out=out)


def test_nan_gate_refused_by_generate(tmp_path, routing_dirs, gate_dir):  # noqa: F811
    model, ads = routing_dirs
    bad = tmp_path / "gate"
    shutil.copytree(gate_dir, bad)
    f = bad / "gate.safetensors"
    w = dict(mx.load(str(f)))
    key = sorted(w)[0]
    a = np.array(w[key])
    a.flat[0] = np.nan
    w[key] = mx.array(a)
    mx.save_safetensors(str(f), w)
    result = run("generate", "--model", model, "--adapters", *ads, "--gate", bad, "--prompt", "x")
    assert_clean_failure(result, key, "NaN or infinite")


def test_merged_adapter_stays_finite(tmp_path, model_dir):
    """The contract's other half: a finite λ still merges, and writes finite weights."""
    a = make_adapter(tmp_path / "a", model_dir, name="a")
    out = tmp_path / "m"
    result = run("merge", a, a, "-m", "task_arithmetic", "--lam", "0.5", "-o", out)
    assert result.exit_code == 0, result.output
    _, w = load_adapter(out)
    assert all(bool(mx.all(mx.isfinite(v)).item()) for v in w.values())
