"""Adapter recipes (adapters/*.yaml): which task, data, base and training options.

A recipe is ``name, task, model, source, examples, prompts`` plus a ``train:`` mapping
of `TrainConfig` fields, so the same file says what `mixlora demo` trains and
how to reproduce one adapter by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapter_format import validate_name
from ..errors import MixloraError
from .phrasing import check_train_style

_KEYS = {"name", "task", "model", "source", "examples", "prompts", "train", "description"}


@dataclass
class AdapterRecipe:
    name: str
    task: str
    model: str = "nano"
    source: str = "synthetic"
    examples: int = 200
    prompts: str = "varied"  # prompt style of the training examples (tasks.phrasing)
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def train_config(self, **overrides):
        from ..train import TrainConfig

        return TrainConfig.from_dict(
            {**self.train, "name": self.name, "task": self.task, **overrides},
            source=f"recipe {self.name!r}",
        )


def recipe_from_dict(d: Any, source: str = "recipe") -> AdapterRecipe:
    if not isinstance(d, dict):
        raise MixloraError(f"{source}: must be a mapping")
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise MixloraError(f"{source}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    for key in ("name", "task"):
        if key not in d:
            raise MixloraError(f"{source}: missing key {key!r}")
    train = d.get("train") or {}
    if not isinstance(train, dict):
        raise MixloraError(f"{source}: train must be a mapping of training options")
    try:
        examples = int(d.get("examples", 200))
    except (TypeError, ValueError):
        raise MixloraError(f"{source}: examples must be an integer") from None
    if examples < 1:
        raise MixloraError(f"{source}: examples must be >= 1, got {examples}")
    recipe = AdapterRecipe(
        name=validate_name(str(d["name"])),
        task=str(d["task"]),
        model=str(d.get("model", "nano")),
        source=str(d.get("source", "synthetic")),
        examples=examples,
        prompts=check_train_style(str(d.get("prompts", "varied"))),
        train={str(k).replace("-", "_"): v for k, v in train.items()},
        description=str(d.get("description", "")),
    )
    recipe.train_config()  # validate the training options now, with the file named
    return recipe


def load_adapter_recipe(path: str | Path) -> AdapterRecipe:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MixloraError(f"recipe not found: {path}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise MixloraError(f"{path} is not valid yaml: {str(e).splitlines()[0]}") from None
    return recipe_from_dict(d, source=str(path))
