"""Fuzzing (hypothesis): parsers of untrusted files fail only with our own clear errors."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import struct
import tempfile
from pathlib import Path

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


# --- through the CLI (issue 18): any input either fails in one line or succeeds with finite output ---

CLI_FAST = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLI_SLOW = settings(CLI_FAST, max_examples=200)


@functools.lru_cache(maxsize=1)
def _fixtures() -> tuple[Path, Path]:
    """One tiny model dir and one adapter for the whole session (hypothesis reruns the body)."""
    from helpers_train import save_model_dir, tiny_model
    from test_bad_inputs import make_adapter

    root = Path(tempfile.mkdtemp(prefix="mixlora-fuzz-"))
    atexit.register(shutil.rmtree, root, True)
    model = save_model_dir(root / "base", tiny_model(0))
    return model, make_adapter(root / "ad", model)


def _scratch() -> Path:
    d = Path(tempfile.mkdtemp(prefix="mixlora-fuzz-case-"))
    atexit.register(shutil.rmtree, d, True)
    return d


def assert_cli_contract(result, out: Path) -> None:
    """Exit 0 with finite tensors in `out`, or exit != 0 with one `error:` line, a foreseen one.

    Either way nothing but `out` itself may appear beside it.
    """
    import mlx.core as mx

    text = result.output
    assert "Traceback" not in text, text
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "debris"
    if result.exit_code == 0:
        for f in out.rglob("*.safetensors") if out.is_dir() else []:
            for name, a in mx.load(str(f)).items():
                assert bool(mx.all(mx.isfinite(a)).item()), (f, name)
        return
    assert not out.exists(), "a failed command left its output"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], text
    assert "(unexpected;" not in errors[0], errors[0]  # the guard caught it: a check is missing
    assert result.exit_code in (1, 2), result.exit_code


def _invoke(*args):
    from click.testing import CliRunner

    from mlx_mixlora.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _config_case(mutation, drop):
    _, ad = _fixtures()
    d = _scratch()
    case = d / "ad"
    shutil.copytree(ad, case)
    cfg = json.loads((case / "adapter_config.json").read_text())
    for k in drop:
        cfg.pop(k, None)
    cfg.update(mutation)
    (case / "adapter_config.json").write_text(json.dumps(cfg))
    out = d / "out"
    assert_cli_contract(_invoke("export", "peft", case, "-o", out), out)


config_mutation = st.dictionaries(
    st.sampled_from([*CONFIG_KEYS, "base_model", "task", "created_by"]), json_values, max_size=4
)
config_drop = st.lists(st.sampled_from(list(VALID)), max_size=2)


@CLI_FAST
@given(config_mutation, config_drop)
def test_cli_fuzz_adapter_config(mutation, drop):
    _config_case(mutation, drop)


@pytest.mark.slow
@CLI_SLOW
@given(config_mutation, config_drop)
def test_cli_fuzz_adapter_config_slow(mutation, drop):
    _config_case(mutation, drop)


def _header_case(key_index, field, value):
    _, ad = _fixtures()
    d = _scratch()
    case = d / "ad"
    shutil.copytree(ad, case)
    f = case / "adapters.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    keys = sorted(k for k in header if k != "__metadata__")
    key = keys[key_index % len(keys)]
    if field == "drop":
        header.pop(key)
    else:
        header[key][field] = value
    new = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    out = d / "out"
    assert_cli_contract(_invoke("merge", case, case, "-m", "linear", "-o", out), out)


def test_cli_merge_of_an_adapter_read_as_int32_is_no_worker_thread_error():
    """Found by the fuzz test below: an int32 tensor is not evaluated by the finite check,
    so it reached a merge worker lazy, tied to the main thread's stream ("There is no
    Stream(cpu, 0) in current thread"). The engine evaluates the adapters first."""
    _header_case(0, "dtype", "I32")


header_value = (
    st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "X9"])
    | st.lists(st.integers(-2, 70), max_size=3)
    | json_values
)
header_args = (st.integers(0, 50), st.sampled_from(["dtype", "shape", "data_offsets", "drop"]))


@CLI_FAST
@given(*header_args, header_value)
def test_cli_fuzz_safetensors_header(key_index, field, value):
    _header_case(key_index, field, value)


@pytest.mark.slow
@CLI_SLOW
@given(*header_args, header_value)
def test_cli_fuzz_safetensors_header_slow(key_index, field, value):
    _header_case(key_index, field, value)


GATE_KEYS = ["layer", "hidden_size", "gate_hidden", "adapters", "mode", "top_k", "threshold",
             "base_model", "train", "format", "format_version", "bogus"]  # fmt: skip


def _gate_case(mutation):
    from helpers_route_cli import _dirs, _gate

    model, ads = _dirs()
    d = _scratch()
    gate = d / "gate"
    shutil.copytree(_gate(), gate)
    cfg = json.loads((gate / "gate.json").read_text())
    cfg.update(mutation)
    (gate / "gate.json").write_text(json.dumps(cfg))
    out = d / "gen.jsonl"
    prompts = d / "p.jsonl"
    prompts.write_text('{"prompt": "what is 2+2?"}\n')
    args = ["--model", model, "--adapters", *ads, "--gate", gate, "--jsonl", prompts]
    assert_cli_contract(_invoke("generate", *args, "--max-tokens", "2", "-o", out), out)


gate_mutation = st.dictionaries(st.sampled_from(GATE_KEYS), json_values, min_size=1, max_size=3)


@CLI_FAST
@given(gate_mutation)
def test_cli_fuzz_gate_config(mutation):
    _gate_case(mutation)


@pytest.mark.slow
@CLI_SLOW
@given(gate_mutation)
def test_cli_fuzz_gate_config_slow(mutation):
    _gate_case(mutation)


def _rows_case(rows):
    model, _ = _fixtures()
    d = _scratch()
    data = d / "d.jsonl"
    data.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    out = d / "ad"
    args = ["--model", model, "--data", data, "--out", out, "--iters", "1", "--quiet"]
    assert_cli_contract(_invoke("train", *args, "--max-seq-len", "16", "--batch-size", "1"), out)


row = example | json_values | st.text(max_size=20)


@CLI_FAST
@given(st.lists(row, min_size=0, max_size=4))
def test_cli_fuzz_training_rows(rows):
    _rows_case(rows)


@pytest.mark.slow
@CLI_SLOW
@given(st.lists(row, min_size=0, max_size=4))
def test_cli_fuzz_training_rows_slow(rows):
    _rows_case(rows)


number_text = (
    st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.integers(-(2**70), 2**70).map(str)
    | st.sampled_from(["nan", "inf", "-inf", "", "1e400", "0x10", "1,2", "abc", "-0"])
    | st.text(max_size=6)
)
MERGE_OPTIONS = ["--lam", "--density", "--drop", "--weights", "--rank", "--seed", "--oversample",
                 "--power-iters"]  # fmt: skip
MERGE_METHODS = ["linear", "task_arithmetic", "ties", "dare_linear", "svd", "magnitude_prune"]


def _options_case(method, options):
    _, ad = _fixtures()
    out = _scratch() / "m"
    args = [x for k, v in options.items() for x in (k, v)]
    assert_cli_contract(_invoke("merge", ad, ad, "-m", method, "-o", out, *args), out)


options = st.dictionaries(st.sampled_from(MERGE_OPTIONS), number_text, max_size=3)


@CLI_FAST
@given(st.sampled_from(MERGE_METHODS), options)
def test_cli_fuzz_merge_options(method, options):
    _options_case(method, options)


@pytest.mark.slow
@CLI_SLOW
@given(st.sampled_from(MERGE_METHODS), options)
def test_cli_fuzz_merge_options_slow(method, options):
    _options_case(method, options)
