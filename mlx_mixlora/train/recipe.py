"""Adapter recipes: the one reader of adapters/*.yaml and of `mixlora train --config` files.

A recipe is ``name, task, model, source, examples, prompts`` plus a ``train:``
mapping of `TrainConfig` fields, so one file says what `mixlora demo` trains and
how to reproduce that adapter by hand. `mixlora train --config` also takes a
plain mapping of `TrainConfig` fields. The built-in recipes ship inside the
package (`mlx_mixlora.recipes`, the repo's adapters/ folder): one per task for
the offline nano base and one for TinyLlama with hub data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..adapter_format import validate_name
from ..errors import MixloraError
from ..io import read_yaml
from ..tasks.phrasing import check_train_style
from ..validate import integer, mapping
from .config import TrainConfig

RECIPE_KEYS = ("name", "task", "model", "source", "examples", "prompts", "train", "description")
# which built-in recipe a base takes: `<task>.<kind>.yaml`
NANO, HUB = "nano", "tinyllama"


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

    def train_config(self, **overrides: Any) -> TrainConfig:
        return TrainConfig.from_dict(
            {**self.train, "name": self.name, "task": self.task, **overrides},
            source=f"recipe {self.name!r}",
        )


def _keys(d: dict[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def recipe_from_dict(d: Any, source: str = "recipe") -> AdapterRecipe:
    mapping(d, source, RECIPE_KEYS, required=("name", "task"))
    train = d.get("train") or {}
    if not isinstance(train, dict):
        raise MixloraError(f"{source}: train must be a mapping of training options")
    recipe = AdapterRecipe(
        name=validate_name(str(d["name"])),
        task=str(d["task"]),
        model=str(d.get("model", "nano")),
        source=str(d.get("source", "synthetic")),
        examples=integer(f"{source}: examples", d.get("examples", 200), lo=1),
        prompts=check_train_style(str(d.get("prompts", "varied"))),
        train=_keys(train),
        description=str(d.get("description", "")),
    )
    recipe.train_config()  # validate the training options now, with the file named
    return recipe


def read_recipe(path: str | Path) -> AdapterRecipe:
    """An adapter recipe file (adapters/*.yaml)."""
    return recipe_from_dict(read_yaml(path, what="recipe"), source=str(path))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """`mixlora train --config`: the TrainConfig fields of a recipe or of a plain options file."""
    d = read_yaml(path, what="recipe") or {}
    if not isinstance(d, dict):
        raise MixloraError(f"recipe {path} must be a mapping of training options")
    if "train" in d:  # an adapter recipe: its `train:` block, named after it
        recipe = recipe_from_dict(d, source=str(path))
        return {**recipe.train, "name": recipe.name, "task": recipe.task}
    fields = _keys(d)
    TrainConfig.from_dict(fields, source=str(path))  # validate names and values early
    return fields


def builtin_recipe_paths() -> list[Path]:
    """The recipe files shipped with the package."""
    root = resources.files("mlx_mixlora.recipes")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml"))


def builtin_recipe(task: str, kind: str = NANO) -> AdapterRecipe:
    """The shipped recipe for `task` on the nano base (`nano`) or TinyLlama (`tinyllama`).

    A task without a recipe of its own (a user task) trains with the
    classification recipe's options, under its own name.
    """
    paths = {p.name: p for p in builtin_recipe_paths()}
    own = paths.get(f"{task}.{kind}.yaml")
    if own is not None:
        return read_recipe(own)
    fallback = paths.get(f"classification.{kind}.yaml")
    if fallback is None:
        raise MixloraError(f"no built-in recipe for {kind!r} bases")
    recipe = read_recipe(fallback)
    recipe.name, recipe.task = validate_name(task, what="task name"), task
    return recipe
