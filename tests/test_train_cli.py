"""`mixlora train` end to end on a tiny model dir, and its one-line errors."""

from __future__ import annotations

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload must come before mlx.core)

# isort: on
import json

import pytest
from click.testing import CliRunner
from helpers_train import save_model_dir

from mlx_mixlora.adapter_format import load_adapter
from mlx_mixlora.cli import main
from mlx_mixlora.model import base_identity


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_dir(tmp_path_factory.mktemp("m") / "tiny")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"prompt": f"is {c} ok?", "completion": " yes" if i % 2 else " no"}
    for i, c in enumerate("abcdefgh")
]


def test_train_writes_adapter_with_recipe_and_flags(tmp_path, model_dir):
    data = _jsonl(tmp_path / "d.jsonl", ROWS + [{"prompt": "x" * 200, "completion": " no"}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rank: 4\nalpha: 8\niters: 3\nlayers: last:1\nmax_seq_len: 64\n")
    out = tmp_path / "ad"
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--config",
            str(recipe),
            "--rank",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "1 truncated, 0 skipped" in r.output
    config, weights = load_adapter(out)
    assert config.rank == 2 and config.alpha == 8 and config.layers == [1]
    assert config.base_model["fingerprint"] == base_identity(model_dir)["fingerprint"]
    assert config.extra["data"]["truncated"] == 1
    assert weights["model.layers.1.self_attn.q_proj.lora_a"].shape == (2, 64)


@pytest.mark.parametrize(
    "args,content,match",
    [
        (["--targets", "q_proj,bogus"], None, "'bogus' matches nothing"),
        (["--layers", "0-4"], None, "uses layer 2 but the model has 2 layers"),
        ([], "", "no examples"),
        ([], '{"text": "ok"}\n{"text": \n', ":2: not valid JSON"),
    ],
)
def test_errors_are_one_line_and_leave_no_output(tmp_path, model_dir, args, content, match):
    data = tmp_path / "d.jsonl"
    if content is None:
        _jsonl(data, ROWS)
    else:
        data.write_text(content)
    out = tmp_path / "ad"
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--iters",
            "1",
            "--quiet",
        ]
        + args,
    )
    assert r.exit_code == 1
    assert r.output.startswith("error: ") and match in r.output and r.output.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".ad*"))
