"""An adapter follows the model, not its bytes: every conversion of one source is one base.

One transformers checkpoint is converted to fp32, bf16 and 4-bit; an adapter
trained on the 4-bit one (QLoRA) loads on the others, an adapter for a
different model of the same shape is refused with a message naming both bases,
`mixlora --force` turns the refusal into a warning, and adapters written before
the source fingerprint existed (byte `fingerprint` only) keep loading.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from mlx_mixlora.cli import main
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.identity import FORCE_ENV, identity_mismatch

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import make_hf_llama  # noqa: E402

ROWS = [{"prompt": f"w{i} w{i + 1}", "completion": f" w{i + 2}"} for i in range(16)]
CONVERSIONS = {
    "fp32": ["--dtype", "float32"],
    "bf16": ["--dtype", "bfloat16"],
    "q4": ["--dtype", "float32", "--quantize", "--q-bits", "4", "--q-group-size", "32"],
}


def run_cli(*args, force: bool = False):
    # env: FORCE_ENV is unset during the call and restored after (--force sets it in-process)
    return CliRunner(env={FORCE_ENV: None}).invoke(
        main, (["--force"] if force else []) + [str(a) for a in args]
    )


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """{conversion: dir} for one source, plus "other": a same-shape model with other weights."""
    root = tmp_path_factory.mktemp("bases")
    src = make_hf_llama(root / "hf", seed=0)
    other_src = make_hf_llama(root / "hf-other", seed=1)
    out = {}
    for name, flags in CONVERSIONS.items():
        out[name] = root / name
        r = run_cli("convert", src, "-o", out[name], *flags)
        assert r.exit_code == 0, r.output
    out["other"] = root / "other"
    assert run_cli("convert", other_src, "-o", out["other"], "--dtype", "float32").exit_code == 0
    return out


@pytest.fixture(scope="module")
def adapter(bases, tmp_path_factory):
    """An adapter trained on the 4-bit conversion."""
    return train(bases["q4"], tmp_path_factory.mktemp("adapter"), iters=2)


def train(model_dir, root, iters: int):
    """A rank-2 adapter on the last layer, trained for `iters` steps with the CLI."""
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = root / "ad"
    r = run_cli(
        "train", "--model", model_dir, "--data", data, "--out", out,
        "--iters", iters, "--rank", "2", "--layers", "last:1", "--max-seq-len", "16",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _load_on(adapter_dir, model_dir):
    from mlx_mixlora.lora import load_adapter_into
    from mlx_mixlora.model import base_identity, load_model

    model, _ = load_model(model_dir)
    return load_adapter_into(model, adapter_dir, base=base_identity(model_dir))


def test_conversions_share_the_source_fingerprint_but_not_bytes(bases):
    from mlx_mixlora.model import base_identity

    ids = {k: base_identity(v) for k, v in bases.items()}
    assert len({ids[k]["fingerprint"] for k in CONVERSIONS}) == 3  # bytes differ
    assert len({ids[k]["source_fingerprint"] for k in CONVERSIONS}) == 1
    assert ids["other"]["source_fingerprint"] != ids["fp32"]["source_fingerprint"]
    assert ids["q4"]["dtype"] == "4-bit (group 32) float32" and ids["bf16"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("target", ["fp32", "bf16", "q4"])
def test_adapter_trained_on_4bit_loads_on_every_conversion(bases, adapter, target):
    config = _load_on(adapter, bases[target])
    assert config.base_model["dtype"].startswith("4-bit")


def test_adapter_for_a_same_shape_other_model_is_refused_naming_both(bases, adapter):
    from mlx_mixlora.model import base_identity

    with pytest.raises(MixloraError) as e:
        _load_on(adapter, bases["other"])
    msg = str(e.value)
    mine, theirs = base_identity(bases["q4"]), base_identity(bases["other"])
    assert "\n" not in msg and msg.startswith(
        f"{adapter}: adapter was trained on a different base model"
    )
    head, tail = msg.split(", this base ")
    # the adapter's base: its source, dtype, dir and fingerprint; then this base's
    assert (
        f"adapter's base {mine['name_or_path']} (4-bit (group 32) float32, dir {bases['q4']}"
        in head
    )
    assert mine["source_fingerprint"] in head
    assert tail.startswith(f"{theirs['name_or_path']} (float32, dir {bases['other']}")
    assert theirs["source_fingerprint"] in tail
    assert "any dtype or quantisation of that source works" in msg
    assert "retrain it on this base" in msg and "`mixlora --force`" in msg and "unsafe" in msg


def test_cli_refusal_is_one_line_and_force_warns(bases, adapter, tmp_path):
    r = run_cli("export", "hf", bases["other"], "--adapter", adapter, "-o", tmp_path / "x")
    assert r.exit_code == 1 and not (tmp_path / "x").exists()
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "different base model" in lines[0]
    r = run_cli(
        "export", "hf", bases["other"], "--adapter", adapter, "-o", tmp_path / "y", force=True
    )
    assert r.exit_code == 0, r.output
    assert "warning: " in r.output and "different base model" in r.output
    assert (tmp_path / "y" / "model.safetensors").is_file()


def test_old_adapter_with_byte_fingerprint_only_keeps_loading(bases, adapter, tmp_path):
    """Adapters written before source_fingerprint: same bytes load, another dtype is refused."""
    from mlx_mixlora.model import base_identity

    old = tmp_path / "old"
    shutil.copytree(adapter, old)
    cfg = json.loads((old / "adapter_config.json").read_text())
    fp32 = base_identity(bases["fp32"])
    cfg["base_model"] = {
        k: v for k, v in fp32.items() if k not in ("source_fingerprint", "dtype", "model_dir")
    }
    (old / "adapter_config.json").write_text(json.dumps(cfg))
    _load_on(old, bases["fp32"])
    with pytest.raises(MixloraError, match="weights fingerprint") as e:
        _load_on(old, bases["bf16"])
    assert "only identical weights files match" in str(e.value)


def test_merged_adapters_from_different_conversions_are_one_base(bases, adapter, tmp_path):
    """Two adapters, trained on the 4-bit and the fp32 conversion, merge."""
    second = train(bases["fp32"], tmp_path, iters=1)
    r = run_cli("merge", adapter, second, "--method", "linear", "-o", tmp_path / "m")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "mine,base,field",
    [
        ({"source_fingerprint": "a", "fingerprint": "x"}, {"source_fingerprint": "a", "fingerprint": "y"}, None),
        ({"source_fingerprint": "a", "fingerprint": "x"}, {"source_fingerprint": "b", "fingerprint": "x"}, "source_fingerprint"),
        ({"source_fingerprint": "a", "fingerprint": "x"}, {"fingerprint": "y"}, "fingerprint"),
        ({"fingerprint": "x"}, {"source_fingerprint": "a", "fingerprint": "x"}, None),
        ({}, {"source_fingerprint": "a", "fingerprint": "x"}, None),
    ],
)  # fmt: skip
def test_identity_compares_the_strongest_field_both_have(mine, base, field):
    assert identity_mismatch(mine, base) == field


def test_dtype_of_a_dir_without_torch_dtype_comes_from_its_weights(tmp_path):
    """The nano base and mlx-lm conversions may not record torch_dtype; messages still say it."""
    import mlx.core as mx
    from helpers_train import save_model_dir

    from mlx_mixlora.model import base_identity

    path = save_model_dir(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert "torch_dtype" not in config and "dtype" not in config
    assert base_identity(path)["dtype"] == "float32"
    weights = path / "model.safetensors"
    mx.save_safetensors(
        str(weights), {k: v.astype(mx.bfloat16) for k, v in mx.load(str(weights)).items()}
    )
    assert base_identity(path)["dtype"] == "bfloat16"
