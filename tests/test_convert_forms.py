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
import os

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_mixlora.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import hf_logits, read_config  # noqa: E402
from helpers_convert import (  # noqa: E402
    FORMS,
    THETA,
    TRANSFORMERS4_ENV,
    make_form_llama,
    other_transformers_logits,
)

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


@pytest.mark.parametrize(
    "form", ["llama3-rope_parameters", "yarn-rope_parameters", "linear-4x-type"]
)
def test_export_hf_reads_back_as_the_same_model(tmp_path, form):
    """convert → export hf → transformers gives the source's logits; so does a dir converted
    before normalisation (its 5.x rope_parameters left in config.json)."""
    src = make_form_llama(tmp_path / "hf", form)
    out = tmp_path / "mlx"
    assert run_cli("convert", src, "-o", out, "--dtype", "float32").exit_code == 0
    ref = hf_logits(src, IDS)
    exported = tmp_path / "exported"
    assert run_cli("export", "hf", out, "-o", exported).exit_code == 0
    cfg = read_config(exported)
    assert "rope_parameters" not in cfg and cfg["rope_theta"] == THETA
    assert np.abs(hf_logits(exported, IDS) - ref).max() <= 1e-4
    if form.endswith("rope_parameters"):  # an old conversion kept the source's config as is
        old_cfg = read_config(out)
        for key in ("rope_theta", "rope_scaling"):
            del old_cfg[key]
        old_cfg["rope_parameters"] = read_config(src)["rope_parameters"]
        (out / "config.json").write_text(json.dumps(old_cfg))
        again = tmp_path / "exported-old"
        assert run_cli("export", "hf", out, "-o", again).exit_code == 0
        assert np.abs(hf_logits(again, IDS) - ref).max() <= 1e-4


@pytest.mark.skipif(
    not os.environ.get(TRANSFORMERS4_ENV),
    reason=f"set {TRANSFORMERS4_ENV} to a site dir with transformers 4.x to run",
)
@pytest.mark.parametrize(
    "form", ["llama3-rope_parameters", "yarn-rope_parameters", "linear-4x-type"]
)
def test_export_hf_reads_back_the_same_in_transformers_4(tmp_path, form):
    src = make_form_llama(tmp_path / "hf", form)
    out, exported = tmp_path / "mlx", tmp_path / "exported"
    assert run_cli("convert", src, "-o", out, "--dtype", "float32").exit_code == 0
    assert run_cli("export", "hf", out, "-o", exported).exit_code == 0
    version, theirs = other_transformers_logits(os.environ[TRANSFORMERS4_ENV], exported, IDS)
    assert version.startswith("4.")
    assert np.abs(theirs - hf_logits(src, IDS)).max() <= 1e-4


def test_export_hf_of_a_dir_without_tie_key_keeps_mlx_lm_tying(tiny_hf_llama, tmp_path):
    """mlx-lm ties embeddings when config.json omits tie_word_embeddings; transformers would not."""
    from mlx_mixlora.model import load

    out = tmp_path / "mlx"
    assert (
        run_cli("convert", tiny_hf_llama(tied=True), "-o", out, "--dtype", "float32").exit_code == 0
    )
    cfg = read_config(out)
    del cfg["tie_word_embeddings"]
    (out / "config.json").write_text(json.dumps(cfg))
    ours = logits(load(out)[0])
    exported = tmp_path / "exported"
    assert run_cli("export", "hf", out, "-o", exported).exit_code == 0
    assert read_config(exported)["tie_word_embeddings"] is True
    assert np.abs(hf_logits(exported, IDS) - ours).max() <= 1e-4
