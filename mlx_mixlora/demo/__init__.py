"""The demo pipeline (`mixlora demo`): base → task adapters (from the shipped recipes) →
merges and routers → the task × method score matrix, its report and plots."""

from .pipeline import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
