"""Every Llama config form transformers has written converts to the same logits as transformers.

Fixtures are saved by the installed transformers (5.x, which writes
``rope_parameters``); the 4.x forms are those weights with config.json rewritten
into 4.x's top-level ``rope_theta``/``rope_scaling`` keys (see helpers_convert).
Each form is compared through `mlx_mixlora.model.load` and `mlx_lm.load`, and
each fixture is checked to be sensitive to its form: the same weights under
theta = 10000 without scaling (what mlx-lm ran a raw 5.x config with) differ.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_mixlora.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import hf_logits, read_config  # noqa: E402
from helpers_convert import FORMS, THETA, make_form_llama  # noqa: E402

IDS = [[1, 17, 5, 99, 42, 7, 200, 3, 64, 128, 11, 250]]


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def logits(model) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array(IDS)).astype(mx.float32))


@pytest.mark.parametrize("form", sorted(FORMS))
def test_form_logit_parity(tmp_path, form):
    import mlx_lm

    from mlx_mixlora.model import load

    src = make_form_llama(tmp_path / "hf", form)
    out = tmp_path / "mlx"
    result = run_cli("convert", src, "-o", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    cfg = read_config(out)
    assert cfg["rope_theta"] == THETA and "rope_parameters" not in cfg
    ref = hf_logits(src, IDS)
    ours = logits(load(out)[0])
    theirs = logits(mlx_lm.load(str(out))[0])
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(theirs - ref).max() <= 1e-4
    # the fixture exercises its form: without it (theta 10000, no scaling) logits move
    naive = dict(cfg, rope_theta=10000.0, rope_scaling=None)
    (out / "config.json").write_text(json.dumps(naive))
    assert np.abs(logits(load(out)[0]) - ref).max() > 1e-2


def test_converted_config_reads_back_in_transformers(tmp_path):
    """The normalised (4.x-form) config is what transformers 5 builds the same model from."""
    from transformers import LlamaConfig

    src = make_form_llama(tmp_path / "hf", "llama3-rope_parameters")
    out = tmp_path / "mlx"
    assert run_cli("convert", src, "-o", out, "--dtype", "float32").exit_code == 0
    original = LlamaConfig.from_pretrained(str(src)).rope_parameters
    converted = LlamaConfig.from_pretrained(str(out)).rope_parameters
    assert {k: v for k, v in converted.items() if k != "type"} == original


@pytest.mark.parametrize(
    "rope,field",
    [
        ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}, "longrope"),
        (
            {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
            "partial_rotary_factor",
        ),
        (
            {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "truncate": False,
            },
            "truncate",
        ),
        (
            {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "attention_factor": 2.0,
            },
            "attention_factor",
        ),
        (
            {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16},
            "original_max_position_embeddings",
        ),
    ],
)
def test_form_we_cannot_compute_is_refused_in_one_line(tiny_hf_llama, tmp_path, rope, field):
    src = tiny_hf_llama()
    cfg = read_config(src)
    cfg["rope_parameters"] = {"rope_theta": THETA, **rope}
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    result = run_cli("convert", src, "-o", out)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], result.output
    assert "neither mixlora nor mlx-lm computes it" in lines[0]
    assert not out.exists()


def test_4x_rope_scaling_wins_over_rope_parameters_like_transformers(tiny_hf_llama, tmp_path):
    """A config carrying both forms: transformers 5 reads rope_scaling and ignores rope_parameters
    entirely (its theta too, so theta falls back to 10000), as 4.x does; so do we."""
    from mlx_mixlora.model import load

    src = tiny_hf_llama()
    cfg = read_config(src)
    cfg.pop("rope_theta", None)
    cfg["rope_parameters"] = {"rope_theta": THETA, "rope_type": "default"}
    cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "mlx"
    assert run_cli("convert", src, "-o", out, "--dtype", "float32").exit_code == 0
    conv = read_config(out)
    assert conv["rope_theta"] == 10000.0 and conv["rope_scaling"]["rope_type"] == "linear"
    assert np.abs(logits(load(out)[0]) - hf_logits(src, IDS)).max() <= 1e-4
