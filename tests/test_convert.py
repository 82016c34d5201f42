"""`mixlora convert`: logit parity with transformers, mlx-lm compatibility, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_mixlora.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import hf_logits, read_config  # noqa: E402

IDS = [[1, 17, 5, 99, 42, 7, 200, 3, 64, 128, 11, 250]]


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def mlx_logits(model_dir):
    import mlx.core as mx

    from mlx_mixlora.model import load_model

    model, _ = load_model(model_dir)
    return np.array(model(mx.array(IDS)).astype(mx.float32))


@pytest.mark.parametrize(
    "heads,kv_heads,tied,dtype,shard",
    [
        (4, 2, False, "float32", None),  # GQA 2x, untied
        (8, 1, True, "float32", None),  # GQA 8x, tied embeddings
        (4, 2, True, "bfloat16", None),  # bf16 on disk
        (8, 1, False, "bfloat16", "40KB"),  # bf16, sharded safetensors
    ],
)
def test_logit_parity_with_transformers(
    tiny_hf_llama, tmp_path, heads, kv_heads, tied, dtype, shard
):
    src = tiny_hf_llama(
        heads=heads, kv_heads=kv_heads, tied=tied, dtype=dtype, max_shard_size=shard
    )
    if shard:
        assert (src / "model.safetensors.index.json").is_file()
    out = tmp_path / "mlx"
    result = run_cli("convert", src, "-o", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    cfg = read_config(out)
    assert cfg["num_key_value_heads"] == kv_heads and cfg["tie_word_embeddings"] == tied
    ref = hf_logits(src, IDS)
    ours = mlx_logits(out)
    assert ours.shape == ref.shape == (1, len(IDS[0]), 256)
    assert np.abs(ours - ref).max() <= 1e-4


def test_converted_dir_loads_with_mlx_lm(tiny_hf_llama, tmp_path):
    import mlx.core as mx
    import mlx_lm

    src = tiny_hf_llama()
    out = tmp_path / "mlx"
    assert run_cli("convert", src, "-o", out).exit_code == 0
    model, tokenizer = mlx_lm.load(str(out))
    theirs = np.array(model(mx.array(IDS)))
    assert np.abs(theirs - mlx_logits(out)).max() == 0.0
    assert np.abs(theirs - hf_logits(src, IDS)).max() <= 1e-4
    assert tokenizer.encode("w5 w6", add_special_tokens=False) == [9, 10]
    source = json.loads((out / "mixlora_source.json").read_text())
    assert source["source"] == str(src) and source["dtype"] == "float32"
    assert (out / "README.md").read_text().startswith("# ")


def test_our_loader_returns_tokenizer(tiny_hf_llama, tmp_path):
    from mlx_mixlora.model import base_identity, load

    out = tmp_path / "mlx"
    assert run_cli("convert", tiny_hf_llama(), "-o", out).exit_code == 0
    model, tok = load(out)
    assert tok.eos_token_id == 2
    ident = base_identity(out)
    assert (
        ident["hidden_size"] == 64
        and ident["num_hidden_layers"] == 2
        and len(ident["fingerprint"]) == 16
    )


def test_quantized_conversion_is_close(tiny_hf_llama, tmp_path):
    import mlx.nn as nn

    from mlx_mixlora.model import load_model

    src = tiny_hf_llama()
    out = tmp_path / "q4"
    result = run_cli(
        "convert", src, "-o", out, "--quantize", "--q-bits", "4", "--q-group-size", "32"
    )
    assert result.exit_code == 0, result.output
    assert read_config(out)["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    model, _ = load_model(out)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    ref = hf_logits(src, IDS)
    ours = mlx_logits(out)
    # 4-bit weights: close but not exact; the relative error stays small on a random model
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 0.25


def test_offline_hub_id_fails_with_one_line(tmp_path, monkeypatch):
    # A closed loopback port stands in for "no network": the real download code runs and fails.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "out"
    result = run_cli("convert", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "-o", out)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "TinyLlama/TinyLlama-1.1B-Chat-v1.0" in lines[0] and lines[0].startswith(
        "error: could not download"
    )
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_missing_dir(tmp_path):
    result = run_cli("convert", tmp_path / "nope", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: checkpoint directory not found: {tmp_path / 'nope'}"


def test_non_llama_config_refused(tiny_hf_llama, tmp_path):
    src = tiny_hf_llama()
    cfg = read_config(src)
    cfg["model_type"] = "gpt2"
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (src / "config.json").write_text(json.dumps(cfg))
    result = run_cli("convert", src, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "not a Llama checkpoint" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_tensor_refused(tiny_hf_llama, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tiny_hf_llama()
    weights = load_file(str(src / "model.safetensors"))
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    result = run_cli("convert", src, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert (
        "missing 1 tensor(s)" in result.output
        and "model.layers.1.mlp.down_proj.weight" in result.output
    )
    assert not (tmp_path / "out").exists()


def test_pickle_checkpoint_refused(tiny_hf_llama, tmp_path):
    src = tiny_hf_llama(safe=False)
    assert (src / "pytorch_model.bin").is_file() and not list(src.glob("*.safetensors"))
    result = run_cli("convert", src, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "refusing to unpickle" in result.output


def test_truncated_safetensors_refused(tiny_hf_llama, tmp_path):
    src = tiny_hf_llama()
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    result = run_cli("convert", src, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "truncated" in result.output


def test_existing_output_refused(tiny_hf_llama, tmp_path):
    (tmp_path / "out").mkdir()
    result = run_cli("convert", tiny_hf_llama(), "-o", tmp_path / "out")
    assert result.exit_code == 1 and "already exists" in result.output


@pytest.mark.slow
def test_tinyllama_shaped_conversion(tiny_hf_llama, tmp_path):
    """TinyLlama dimensions (hidden 2048, 32/4 heads, vocab 32000), one layer, random weights."""
    src = tiny_hf_llama(
        hidden=2048,
        intermediate=5632,
        heads=32,
        kv_heads=4,
        vocab=32000,
        layers=1,
        dtype="bfloat16",
        tokenizer=False,
    )
    out = tmp_path / "mlx"
    result = run_cli("convert", src, "-o", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    ref = hf_logits(src, [[1, 500, 31999, 7, 12000]])
    import mlx.core as mx

    from mlx_mixlora.model import load_model

    model, _ = load_model(out)
    ours = np.array(model(mx.array([[1, 500, 31999, 7, 12000]])))
    assert np.abs(ours - ref).max() <= 1e-4
