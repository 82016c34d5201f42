"""Bad inputs, driven through the CLI: one clear `error:` line, exit code ≠ 0, no partial output."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401
from helpers_train import save_model_dir, tiny_model

from mlx_mixlora.adapter_format import AdapterConfig, save_adapter
from mlx_mixlora.cli import main
from mlx_mixlora.model import base_identity


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result, *fragments, out: Path | None = None):
    """Exit ≠ 0, one `error:` line (the last) naming the problem, and `out` not created.

    Progress lines may precede the error; nothing may follow it (no traceback).
    """
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    lines = errors
    print(f"BAD-INPUT {lines[0]}")  # shown with `pytest -s`: the catalogue of messages
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], (
            "temp files left behind"
        )
    return lines[0]


@pytest.fixture
def model_dir(tmp_path):
    return save_model_dir(tmp_path / "base", tiny_model(0))


@pytest.fixture
def other_model_dir(tmp_path):
    return save_model_dir(tmp_path / "other", tiny_model(1, hidden_size=32, intermediate_size=64))


def make_adapter(path, model_dir, rank=4, targets=("q_proj", "v_proj"), seed=0, name="a"):
    cfg = AdapterConfig(
        rank=rank,
        alpha=8.0,
        targets=list(targets),
        layers=[0, 1],
        base_model=base_identity(model_dir),
        name=name,
    )
    rng = np.random.default_rng(seed)
    hidden = cfg.base_model["hidden_size"]
    out_dims = {"q_proj": hidden, "v_proj": hidden // 2, "k_proj": hidden // 2, "o_proj": hidden}
    w = {}
    for p in cfg.module_paths():
        w[f"{p}.lora_a"] = mx.array(rng.standard_normal((rank, hidden)).astype(np.float32))
        w[f"{p}.lora_b"] = mx.array(
            rng.standard_normal((out_dims[p.rsplit(".", 1)[1]], rank)).astype(np.float32)
        )
    return save_adapter(path, cfg, w)


def write_jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


GOOD_ROWS = [{"prompt": f"abc {i} =", "completion": f" {i % 3}"} for i in range(8)]


# --- training data ----------------------------------------------------------------------------------


def test_malformed_jsonl_names_the_line(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS[:2] + ['{"prompt": "x", \n'])
    out = tmp_path / "ad"
    assert_clean_failure(
        run("train", "--model", model_dir, "--data", data, "--out", out, "--iters", "1"),
        "d.jsonl:3:",
        out=out,
    )


def test_empty_jsonl(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [])
    out = tmp_path / "ad"
    assert_clean_failure(
        run("train", "--model", model_dir, "--data", data, "--out", out, "--iters", "1"),
        "empty",
        out=out,
    )


def test_wrong_field_names(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "x", "answer": "y"}])
    out = tmp_path / "ad"
    assert_clean_failure(
        run("train", "--model", model_dir, "--data", data, "--out", out, "--iters", "1"),
        "d.jsonl:1:",
        out=out,
    )


def test_adapter_name_with_path_traversal(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "ad"
    for bad in ("../evil", "a/b"):
        result = run(
            "train",
            "--model",
            model_dir,
            "--data",
            data,
            "--out",
            out,
            "--iters",
            "1",
            "--name",
            bad,
        )
        assert_clean_failure(result, "invalid adapter name", out=out)


def test_existing_output_directory(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "ad"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("train", "--model", model_dir, "--data", data, "--out", out, "--iters", "1")
    assert_clean_failure(result, "already exists")
    assert (out / "keep.txt").read_text() == "mine"


def test_nan_loss_stops_training(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "ad"
    result = run(
        "train", "--model", model_dir, "--data", data, "--out", out, "--iters", "4", "--lr", "1e38", "--quiet",
    )  # fmt: skip
    assert_clean_failure(result, "loss", "not finite", out=out)


# --- adapter files ----------------------------------------------------------------------------------


def test_rank_in_file_differs_from_config(tmp_path, model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["rank"] = 8
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "peft"
    assert_clean_failure(run("export", "peft", ad, "-o", out), "config says rank 8", out=out)


def test_unknown_config_key(tmp_path, model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["lora_magic"] = True
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "m"
    assert_clean_failure(
        run("merge", ad, ad, "--method", "linear", "-o", out), "unknown keys", "lora_magic", out=out
    )


@pytest.mark.parametrize("damage", ["truncate", "garbage", "absurd-header"])
def test_corrupt_adapter_safetensors(tmp_path, model_dir, damage):
    ad = make_adapter(tmp_path / "ad", model_dir)
    f = ad / "adapters.safetensors"
    raw = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        f.write_bytes(b"\x00\x01not a safetensors file")
    else:
        f.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
    out = tmp_path / "peft"
    assert_clean_failure(run("export", "peft", ad, "-o", out), str(f), out=out)


def test_adapter_for_another_base(tmp_path, model_dir, other_model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    out = tmp_path / "hf"
    assert_clean_failure(
        run("export", "hf", other_model_dir, "--adapter", ad, "-o", out), "hidden_size=64", out=out
    )
    other = make_adapter(tmp_path / "other-ad", other_model_dir, name="b")
    out = tmp_path / "m"
    assert_clean_failure(run("merge", ad, other, "--method", "linear", "-o", out), out=out)


def test_adapter_for_same_shape_different_weights(tmp_path, model_dir):
    twin = save_model_dir(tmp_path / "twin", tiny_model(7))
    ad = make_adapter(tmp_path / "ad", model_dir)
    out = tmp_path / "hf"
    assert_clean_failure(
        run("export", "hf", twin, "--adapter", ad, "-o", out), "different base model", out=out
    )


def test_merge_adapters_with_disjoint_targets(tmp_path, model_dir):
    """Disjoint targets are not an error: the merge covers the union, each module from its own adapter."""
    a = make_adapter(tmp_path / "a", model_dir, targets=("q_proj",), name="a")
    b = make_adapter(tmp_path / "b", model_dir, targets=("v_proj",), seed=1, name="b")
    result = run("merge", a, b, "--method", "linear", "-o", tmp_path / "m")
    assert result.exit_code == 0, result.output


def test_missing_adapter_dir(tmp_path):
    out = tmp_path / "m"
    assert_clean_failure(
        run("merge", tmp_path / "nope", tmp_path / "nope2", "--method", "linear", "-o", out),
        "not found",
        out=out,
    )


# --- pickles and security -----------------------------------------------------------------------------


def test_pickle_model_refused(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "ad"
    assert_clean_failure(
        run("train", "--model", d, "--data", data, "--out", out, "--iters", "1"), "pickle", out=out
    )


def test_gate_for_a_different_adapter_set(routing_dirs, gate_dir):  # noqa: F811
    model_dir, adapters = routing_dirs
    swapped = [adapters[1], adapters[0], *adapters[2:]]
    for wrong_set in (swapped, adapters[:-1]):
        args = [
            "--model",
            model_dir,
            "--adapters",
            *wrong_set,
            "--gate",
            gate_dir,
            "--prompt",
            "hello",
        ]
        assert_clean_failure(run("generate", *args), "was trained for adapters")


def test_pickled_peft_adapter_refused(tmp_path):
    d = tmp_path / "peft"
    d.mkdir()
    (d / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8})
    )
    (d / "adapter_model.bin").write_bytes(b"\x80\x04 pickled")
    out = tmp_path / "ours"
    assert_clean_failure(
        run("import", "peft", d, "-o", out), "refusing to load", "adapter_model.bin", out=out
    )


def test_adapter_for_a_base_with_fewer_layers(tmp_path, model_dir):
    shallow = save_model_dir(tmp_path / "shallow", tiny_model(0, num_hidden_layers=1))
    ad = make_adapter(tmp_path / "ad", model_dir)
    out = tmp_path / "hf"
    assert_clean_failure(
        run("export", "hf", shallow, "--adapter", ad, "-o", out), "num_hidden_layers=2", out=out
    )
