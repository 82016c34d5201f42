"""The demo pipeline (`mixlora demo`): base → task adapters → merges and routers → the
task × method score matrix, its report and plots."""

from .pipeline import (
    HUB_EXAMPLES,
    HUB_TRAIN,
    NANO_EXAMPLES,
    NANO_TRAIN,
    TRAIN_PROMPTS,
    DemoConfig,
    run_demo,
)

__all__ = [
    "HUB_EXAMPLES",
    "HUB_TRAIN",
    "NANO_EXAMPLES",
    "NANO_TRAIN",
    "TRAIN_PROMPTS",
    "DemoConfig",
    "run_demo",
]
