"""Issue 18, category 5: odd values that used to end in a traceback now end in one error line."""

from __future__ import annotations

import json
import os

import pytest
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401
from helpers_train import save_model_dir, tiny_model
from test_bad_inputs import GOOD_ROWS, assert_clean_failure, make_adapter, run, write_jsonl


@pytest.fixture
def model_dir(tmp_path):
    return save_model_dir(tmp_path / "base", tiny_model(0))


def train(model_dir, data, out, *extra):
    return run("train", "--model", model_dir, "--data", data, "--out", out, "--quiet", *extra)


@pytest.mark.parametrize("seed", ["-1", "123456789012345678901", "4294967296"])
def test_seed_out_of_range(tmp_path, model_dir, seed):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    ad = make_adapter(tmp_path / "ad", model_dir)
    out = tmp_path / "o"
    cases = [
        ("train", "--model", model_dir, "--data", data, "--out", out, "--iters", "1"),
        ("merge", ad, ad, "-m", "dare_linear", "--drop", "0.5", "-o", out),
        ("generate", "--model", model_dir, "--adapters", ad, "--prompt", "abc"),
    ]
    for args in cases:
        assert_clean_failure(run(*args, "--seed", seed), "--seed", out=out)


def test_lone_surrogate_in_data_and_prompt(tmp_path, model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps(r) + "\n" for r in GOOD_ROWS)
        + '{"prompt": "a\\ud800b", "completion": "c"}\n'
    )
    out = tmp_path / "o"
    assert_clean_failure(
        train(model_dir, data, out, "--iters", "1"), "d.jsonl:9", "Unicode", out=out
    )
    ad = make_adapter(tmp_path / "ad", model_dir)
    result = run("generate", "--model", model_dir, "--adapters", ad, "--prompt", "ab\udcffc")
    assert_clean_failure(result, "--prompt", "Unicode")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x\\udfffy"}\n')
    result = run("generate", "--model", model_dir, "--adapters", ad, "--jsonl", prompts)
    assert_clean_failure(result, "p.jsonl", "Unicode")


def test_deeply_nested_json(tmp_path, model_dir):
    deep = "[" * 100_000 + "]" * 100_000
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": ' + deep + ', "completion": "x"}\n')
    out = tmp_path / "o"
    assert_clean_failure(
        train(model_dir, data, out, "--iters", "1"), "d.jsonl:1", "nested", out=out
    )
    ad = make_adapter(tmp_path / "ad", model_dir)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    text = json.dumps(cfg)[:-1] + ', "extra": {"x": ' + deep + "}}"
    (ad / "adapter_config.json").write_text(text)
    assert_clean_failure(run("export", "peft", ad, "-o", out), "nested", out=out)


CONFIG_DAMAGE = {
    "vocab_size=0": {"vocab_size": 0},
    "vocab_size=1e12": {"vocab_size": 10**12},
    "num_attention_heads=0": {"num_attention_heads": 0},
    "num_hidden_layers=0": {"num_hidden_layers": 0},
    "num_hidden_layers=-1": {"num_hidden_layers": -1},
    "num_hidden_layers='2'": {"num_hidden_layers": "2"},
    "rms_norm_eps=-1": {"rms_norm_eps": -1},
    "rms_norm_eps=NaN": {"rms_norm_eps": float("nan")},
    "hidden_size missing": {"hidden_size": None},
    "kv heads not dividing": {"num_key_value_heads": 3},
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_config_json_out_of_range(tmp_path, model_dir, damage):
    cfg = json.loads((model_dir / "config.json").read_text())
    for k, v in CONFIG_DAMAGE[damage].items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (model_dir / "config.json").write_text(json.dumps(cfg))
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    key = damage.split("=")[0].split(" ")[0]
    key = "num_key_value_heads" if key == "kv" else key
    out = tmp_path / "o"
    assert_clean_failure(train(model_dir, data, out, "--iters", "1"), "config.json", key, out=out)
    assert_clean_failure(run("convert", model_dir, "-o", out), "config.json", key, out=out)


def test_q_group_size_zero(tmp_path, model_dir):
    out = tmp_path / "q"
    result = run("convert", model_dir, "-o", out, "--quantize", "--q-group-size", "0")
    assert_clean_failure(result, "--q-group-size", out=out)


def _trained_with_checkpoint(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "ad"
    args = ("--iters", "4", "--save-every", "2", "--seed", "1")
    assert train(model_dir, data, out, *args).exit_code == 0
    return data, out, args


@pytest.mark.parametrize("step", [1000, -5, "abc", None, 3, True, 2.0])
def test_tampered_checkpoint_state(tmp_path, model_dir, step):
    data, out, args = _trained_with_checkpoint(tmp_path, model_dir)
    state = out.with_name("ad.checkpoints") / "step_0000002" / "state.json"
    info = json.loads(state.read_text())
    info["step"] = step
    state.write_text(json.dumps(info))
    before = (out / "adapters.safetensors").read_bytes()
    result = train(model_dir, data, out, *args, "--resume", "--overwrite")
    assert_clean_failure(result, "state.json", "step", "damaged")
    assert (out / "adapters.safetensors").read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "self-link", "empty"])
def test_damaged_model_weights(tmp_path, model_dir, damage):
    f = model_dir / "model.safetensors"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[:5000])
    elif damage == "self-link":
        f.unlink()
        f.symlink_to(f)
    else:
        f.write_bytes(b"")
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "o"
    assert_clean_failure(train(model_dir, data, out, "--iters", "1"), "model.safetensors", out=out)
    assert_clean_failure(run("convert", model_dir, "-o", out), "model.safetensors", out=out)


def test_model_dir_without_tokenizer(tmp_path, model_dir):
    for name in os.listdir(model_dir):
        if name.startswith(("tokenizer", "special_tokens")):
            (model_dir / name).unlink()
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "o"
    assert_clean_failure(train(model_dir, data, out, "--iters", "1"), "no tokenizer", out=out)


BROKEN_YAML = {
    "unclosed flow": "rank: [8, 16\n",
    "tab indent": "rank: 8\n\tlr: 1e-3\n",
    "bad mapping": "rank: 8\nlr 1e-3: : :\n",
    "undefined alias": "rank: *nope\n",
    "python tag": "rank: !!python/object/apply:os.system ['true']\n",
    "not a mapping": "- rank\n- 8\n",
    "wrong type": "rank: eight\n",
    "binary": "\x00\x01\x02 rank: 8\n",
}


@pytest.mark.parametrize("kind", list(BROKEN_YAML))
def test_broken_yaml_recipe(tmp_path, model_dir, kind):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BROKEN_YAML[kind])
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "o"
    result = train(model_dir, data, out, "--config", recipe, "--iters", "1")
    assert_clean_failure(result, "r.yaml", out=out)
