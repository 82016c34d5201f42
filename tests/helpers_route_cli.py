"""A model dir with a char tokenizer, four task-labelled random adapters and a trained gate.

Built once per test session (cached here, not per importing module) and removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers_route import save_model_dir, save_random_adapters, tiny_model


@functools.lru_cache(maxsize=1)
def _dirs() -> tuple[Path, tuple[str, ...]]:
    root = Path(tempfile.mkdtemp(prefix="mixlora-route-"))
    atexit.register(shutil.rmtree, root, True)
    model = tiny_model(layers=2)
    model_dir = save_model_dir(root / "model", model)
    ads = save_random_adapters(root / "ads", model, n=4, layers=(1,))
    return model_dir, tuple(str(a) for a in ads)


@functools.lru_cache(maxsize=1)
def _gate() -> Path:
    from click.testing import CliRunner

    from mlx_mixlora.cli import main

    model_dir, ads = _dirs()
    out = model_dir.parent / "gate"
    args = ["gate", "train", "--model", str(model_dir), "--adapters", *ads, "-o", str(out)]
    res = CliRunner().invoke(
        main, [*args, "--n-per-task", "120", "--n-eval", "60", "--steps", "200"]
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def routing_dirs() -> tuple[Path, list[str]]:
    model_dir, ads = _dirs()
    return model_dir, list(ads)


@pytest.fixture
def gate_dir() -> Path:
    return _gate()
