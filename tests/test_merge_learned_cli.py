"""`mixlora merge --method adamerging|lorahub` and `--search`, as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_route import save_model_dir, save_random_adapters, tiny_model

from mlx_mixlora.adapter_format import load_adapter
from mlx_mixlora.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned")
    model = tiny_model(0)
    base = save_model_dir(root / "base", model)
    ads = save_random_adapters(root / "ads", model, n=2, scale=0.1)  # classification, qa
    return root, base, ads


def run(*args):
    return CliRunner().invoke(main, ["merge", *[str(a) for a in args]])


def test_adamerging_from_the_validation_split_writes_a_loadable_adapter(setup, tmp_path):
    root, base, ads = setup
    out = tmp_path / "m"
    r = run(*ads, "-m", "adamerging", "--model", base, "--calib", "validation",
            "--calib-examples", 3, "--steps", 3, "-o", out, "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg, w = load_adapter(out)
    learned = cfg.extra["merge"]["learned"]
    assert learned["calibration_examples"] == {"classification": 3, "qa": 3}
    assert learned["granularity"] == "layer" and learned["steps"] == 3
    assert np.array(learned["coefficients"]).shape == (2, 2)
    assert json.loads(r.stdout[r.stdout.index("{") :])["method"] == "adamerging"
    assert "learned on 6 calibration prompts" in r.output


def test_search_and_lorahub_from_a_calibration_file(setup, tmp_path):
    root, base, ads = setup
    calib = tmp_path / "c.jsonl"
    rows = [
        {"prompt": "News: rain in oslo\nTopic:", "task": "classification", "completion": " World"},
        {"prompt": "Passage: it is red.\nQuestion: is it red?\nAnswer:", "task": "qa",
         "completion": " yes"},
    ]  # fmt: skip
    calib.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run(*ads, "-m", "ties", "--search", "--model", base, "--calib", calib, "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    chosen = load_adapter(tmp_path / "s")[0].extra["merge"]["learned"]["chosen"]
    assert set(chosen) == {"density", "scale"}
    pytest.importorskip("cma")
    r = run(*ads, "-m", "lorahub", "--budget", 8, "--model", base, "--calib", calib,
            "-o", tmp_path / "h")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(load_adapter(tmp_path / "h")[0].extra["merge"]["learned"]["coefficients"]) == 2


@pytest.mark.parametrize(
    "extra, match",
    [
        (["-m", "adamerging", "--calib", "validation"], "needs --model"),
        (["-m", "adamerging", "--model", "BASE"], "needs --calib"),
        (["-m", "adamerging", "--model", "BASE", "--calib", "test"], "never reads the test split"),
        (
            ["-m", "linear", "--model", "BASE", "--calib", "validation", "--search"],
            "--search covers",
        ),
        (["-m", "adamerging", "--model", "BASE", "--calib", "nope.jsonl"], "does not exist"),
        (["-m", "adamerging", "--model", "nowhere", "--calib", "validation"], "nowhere"),
    ],
)
def test_bad_learned_merges_are_one_error_line_and_write_nothing(setup, tmp_path, extra, match):
    root, base, ads = setup
    extra = [str(base) if x == "BASE" else x for x in extra]
    r = run(*ads, *extra, "-o", tmp_path / "out")
    assert r.exit_code != 0
    assert match in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
