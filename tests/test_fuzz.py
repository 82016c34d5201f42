"""Fuzzing (hypothesis): parsers of untrusted files fail only with our own clear errors."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_mixlora.adapter_format import AdapterConfig
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.io import check_safetensors_header

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 40)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)

VALID = {"rank": 4, "alpha": 8, "targets": ["q_proj"], "layers": [0, 1]}
CONFIG_KEYS = list(VALID) + [
    "use_rslora",
    "dropout",
    "rank_pattern",
    "alpha_pattern",
    "name",
    "format",
    "format_version",
    "bogus",
]

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, max_size=8), st.booleans())
def test_adapter_config_parser(mutation, start_valid):
    raw = {**VALID, **mutation} if start_valid else mutation
    try:
        cfg = AdapterConfig.from_dict(raw)
    except MixloraError:
        return
    assert cfg.rank >= 1 and cfg.targets and cfg.layers
    for p in cfg.module_paths():
        assert cfg.scale_of(p) == cfg.scale_of(p)  # usable, no exception


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_safetensors_header_reader(tmp_path_factory, tail, claimed):
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + tail)
    with pytest.raises(MixloraError):
        check_safetensors_header(path)


@FUZZ
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_safetensors_header_json(tmp_path_factory, header):
    raw = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    try:
        check_safetensors_header(path)
    except MixloraError:
        pass


PEFT_KEYS = [
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "use_dora",
    "bias",
    "modules_to_save",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "lora_dropout",
]


@FUZZ
@given(st.dictionaries(st.sampled_from(PEFT_KEYS), json_values, max_size=6))
def test_peft_importer_config(tmp_path_factory, mutation):
    """A real exported PEFT dir with a fuzzed config imports or fails with MixloraError."""
    import mlx.core as mx
    from mlx_mixlora.convert.peft import PEFT_CONFIG, PEFT_WEIGHTS, import_peft

    d = tmp_path_factory.mktemp("peft")
    mx.save_safetensors(
        str(d / PEFT_WEIGHTS),
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": mx.ones((4, 8)),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": mx.ones((8, 4)),
        },
    )
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, **mutation}
    (d / PEFT_CONFIG).write_text(json.dumps(config))
    try:
        import_peft(d, d / "out")
    except MixloraError:
        assert not (d / "out").exists()


EXAMPLE_KEYS = ["text", "prompt", "completion", "messages", "role", "content"]
message = st.fixed_dictionaries(
    {},
    optional={
        "role": json_values | st.sampled_from(["user", "assistant"]),
        "content": json_values | st.text(max_size=8),
    },
)
example = st.dictionaries(
    st.sampled_from(EXAMPLE_KEYS),
    json_values | st.text(max_size=10) | st.lists(message, max_size=3),
    max_size=4,
)


@FUZZ
@given(st.binary(max_size=200))
def test_jsonl_reader_raw_bytes(tmp_path_factory, raw):
    from mlx_mixlora.train.data import read_jsonl

    path = tmp_path_factory.mktemp("jsonl") / "d.jsonl"
    path.write_bytes(raw)
    try:
        rows = read_jsonl(path)
    except MixloraError:
        return
    assert rows and all(isinstance(r, dict) for r in rows)


@FUZZ
@given(st.lists(example | json_values, min_size=0, max_size=5))
def test_jsonl_reader_and_tokenizer(tmp_path_factory, rows):
    """Any line mix either tokenizes (char tokenizer) or fails with one MixloraError."""
    from helpers_train import CharTokenizer

    from mlx_mixlora.train.data import prepare, read_jsonl

    path = tmp_path_factory.mktemp("jsonl") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        items, stats = prepare(read_jsonl(path), CharTokenizer(), 64, True, "truncate")
    except MixloraError:
        return
    assert stats.examples == len(rows)
