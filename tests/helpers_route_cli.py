"""A model dir with a char tokenizer and four task-labelled random adapters, for CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_route import save_model_dir, save_random_adapters, tiny_model


@pytest.fixture(scope="session")
def routing_dirs(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("routing")
    model = tiny_model(layers=2)
    model_dir = save_model_dir(root / "model", model)
    ads = save_random_adapters(root / "ads", model, n=4, layers=(1,))
    return model_dir, [str(a) for a in ads]


@pytest.fixture(scope="session")
def gate_dir(routing_dirs, tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from mlx_mixlora.cli import main

    model_dir, ads = routing_dirs
    out = tmp_path_factory.mktemp("gate") / "gate"
    res = CliRunner().invoke(
        main,
        [
            "gate",
            "train",
            "--model",
            str(model_dir),
            "--adapters",
            *ads,
            "-o",
            str(out),
            "--n-per-task",
            "120",
            "--n-eval",
            "60",
            "--steps",
            "200",
        ],
    )
    assert res.exit_code == 0, res.output
    return out
