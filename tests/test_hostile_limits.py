"""Issue 18, categories 6 (trust boundaries) and 7 (values that used to be accepted silently)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401
from helpers_train import save_model_dir, tiny_model
from test_bad_inputs import GOOD_ROWS, assert_clean_failure, make_adapter, run, write_jsonl

import mlx_mixlora.train.data as train_data
from mlx_mixlora.validate import CHARS_PER_TOKEN_BOUND


@pytest.fixture
def model_dir(tmp_path):
    return save_model_dir(tmp_path / "base", tiny_model(0))


def train(model_dir, data, out, *extra):
    return run("train", "--model", model_dir, "--data", data, "--out", out, "--quiet", *extra)


# --- 6. trust boundaries ---------------------------------------------------------------------------


def _sharded(src, tmp_path, target):
    """A checkpoint whose index sends one shard name to `target`; a real shard waits there."""
    d = tmp_path / "sharded"
    shutil.copytree(src, d)
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    outside = tmp_path / "outside.safetensors"
    shutil.copy(d / "model-00001-of-00001.safetensors", outside)
    import mlx.core as mx

    keys = list(mx.load(str(outside)))
    weight_map = {k: "model-00001-of-00001.safetensors" for k in keys}
    weight_map[keys[0]] = target(outside)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return d


@pytest.mark.parametrize(
    "target", [lambda p: "../" + p.name, lambda p: str(p)], ids=["dotdot", "absolute"]
)
def test_index_paths_must_stay_inside_the_checkpoint(tmp_path, model_dir, target):
    src = _sharded(model_dir, tmp_path, target)
    out = tmp_path / "mlx"
    result = run("convert", src, "-o", out)
    assert_clean_failure(result, "index.json", "points outside", out=out)


def _cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "mlx_mixlora.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_fifo_as_weights_file_does_not_hang(tmp_path, model_dir):
    (model_dir / "model.safetensors").unlink()
    os.mkfifo(model_dir / "model.safetensors")
    out = tmp_path / "out"
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    for args in (
        ("convert", model_dir, "-o", out),
        ("train", "--model", model_dir, "--data", data, "--out", out, "--iters", "1"),
    ):
        proc = _cli(*args)  # a hang raises TimeoutExpired
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and "not a regular file" in lines[-1], proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()


def test_a_huge_row_is_cut_before_tokenizing(tmp_path, model_dir, monkeypatch):
    seen = []
    real = train_data.tokenize_example

    def spy(ex, tokenizer, mask_prompt=True):
        seen.append(sum(len(v) for v in ex.values() if isinstance(v, str)))
        return real(ex, tokenizer, mask_prompt)

    monkeypatch.setattr(train_data, "tokenize_example", spy)
    huge = "abc def " * (10 * 2**20 // 8)  # a 10 MB single line
    rows = [{"text": huge}, {"prompt": huge, "completion": " 1"}, *GOOD_ROWS]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "ad"
    result = train(model_dir, data, out, "--max-seq-len", "32", "--iters", "1")
    assert result.exit_code == 0, result.output
    limit = 32 * CHARS_PER_TOKEN_BOUND
    assert seen[0] == limit and seen[1] == limit + 2, seen[:2]
    assert max(seen[2:]) < 20 and out.is_dir()


# --- 7. accepted silently before --------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag,value,fragment",
    [
        ("--save-every", "-1", "--save-every"),
        ("--val-every", "-1", "--val-every"),
        ("--layers", "", "layers must not be empty"),
        ("--rank", "100", "rank 100 is larger than"),
        ("--lr", "nan", "--lr"),
        ("--alpha", "inf", "--alpha"),
        ("--weight-decay", "nan", "--weight-decay"),
        ("--epochs", "inf", "--epochs"),
    ],
)
def test_train_options_out_of_range(tmp_path, model_dir, flag, value, fragment):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "ad"
    assert_clean_failure(
        train(model_dir, data, out, flag, value, "--iters", "1"), fragment, out=out
    )


def test_recipe_values_out_of_range(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "ad"
    for text, fragment in [
        ("save_every: -1\n", "save_every"),
        ("val_every: -3\n", "val_every"),
        ("weight_decay: .nan\n", "weight_decay"),
        ("weight_decay: -0.1\n", "weight_decay"),
        ("seed: -1\n", "seed"),
        ("layers: ''\n", "layers"),
    ]:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(text)
        result = train(model_dir, data, out, "--config", recipe, "--iters", "1")
        assert_clean_failure(result, fragment, out=out)


@pytest.mark.parametrize(
    "flag,value",
    [("--temp", "-1"), ("--temp", "nan"), ("--threshold", "2"), ("--threshold", "nan")],
)
def test_generate_options_out_of_range(tmp_path, model_dir, flag, value):
    ad = make_adapter(tmp_path / "ad", model_dir)
    result = run("generate", "--model", model_dir, "--adapters", ad, "--prompt", "abc", flag, value)
    assert_clean_failure(result, flag)


def test_gate_from_another_base(tmp_path, routing_dirs, gate_dir):  # noqa: F811
    model, ads = routing_dirs
    other = tmp_path / "gate"
    shutil.copytree(gate_dir, other)
    cfg = json.loads((other / "gate.json").read_text())
    assert cfg["base_model"]["fingerprint"]
    cfg["base_model"]["fingerprint"] = "0123456789abcdef"
    (other / "gate.json").write_text(json.dumps(cfg))
    result = run("generate", "--model", model, "--adapters", *ads, "--gate", other, "--prompt", "x")
    assert_clean_failure(result, "different base model", "fingerprint")
    result = run(
        "generate", "--model", model, "--adapters", *ads, "--gate", gate_dir, "--prompt", "x"
    )
    assert result.exit_code == 0, result.output
