"""Train LoRA adapters: data → packed batches → compiled step → adapter dir."""

from .config import TrainConfig
from .recipe import AdapterRecipe, builtin_recipe, load_recipe, read_recipe
from .trainer import TrainResult, evaluate, train_adapter

__all__ = [
    "AdapterRecipe",
    "TrainConfig",
    "TrainResult",
    "builtin_recipe",
    "evaluate",
    "load_recipe",
    "read_recipe",
    "train_adapter",
]
