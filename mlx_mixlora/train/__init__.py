"""Train LoRA adapters: data → packed batches → compiled step → adapter dir."""

from .config import TrainConfig, load_recipe
from .trainer import TrainResult, evaluate, train_adapter

__all__ = ["TrainConfig", "TrainResult", "evaluate", "load_recipe", "train_adapter"]
