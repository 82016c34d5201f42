"""Every recipe in adapters/ is accepted by `mixlora train --config`."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_mixlora.train import TrainConfig, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "adapters").glob("*.yaml"))


def test_there_is_one_nano_and_one_tinyllama_recipe_per_task():
    names = {p.name for p in RECIPES}
    for task in ("classification", "qa", "summarization", "sentiment"):
        assert {f"{task}.nano.yaml", f"{task}.tinyllama.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_is_a_valid_train_config(path):
    fields = load_recipe(path)
    cfg = TrainConfig.from_dict(fields, source=str(path)).validate()
    attention = {"q_proj", "k_proj", "v_proj", "o_proj"}
    mlp = {"gate_proj", "up_proj", "down_proj"}
    # nano recipes adapt the MLP too (it carries the phrasing-robust task mapping, #16)
    assert cfg.rank == 8 and set(cfg.targets) == (
        attention | mlp if ".nano." in path.name else attention
    )
    assert cfg.task == path.name.split(".")[0]
