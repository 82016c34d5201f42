"""Fixtures for routing tests: a tiny Llama, a char-level tokenizer dir, random adapters."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
from helpers_train import save_model_dir as train_save_model_dir
from helpers_train import tiny_model as train_tiny_model
from mlx.utils import tree_flatten
from mlx_lm.models import llama

import mlx_mixlora  # noqa: F401  (BLAS preload before mlx.core)
from mlx_mixlora.adapter_format import AdapterConfig, module_path, save_adapter
from mlx_mixlora.modules import get_module

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!/()'\"\n-"
TASKS = ("classification", "qa", "summarization", "sentiment")


def tiny_model(seed: int = 0, layers: int = 2, vocab: int = 96) -> llama.Model:
    return train_tiny_model(seed, num_hidden_layers=layers, vocab_size=vocab)


def params(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def random_adapter(
    model,
    seed: int,
    layers=(0, 1),
    targets=("q_proj", "v_proj", "down_proj"),
    rank: int = 4,
    alpha: float = 8.0,
    task: str | None = None,
    name: str | None = None,
    scale: float = 0.2,
) -> tuple[AdapterConfig, dict[str, mx.array]]:
    """An adapter with random A and B (B nonzero, so it changes the model)."""
    rng = np.random.default_rng(seed)
    cfg = AdapterConfig(
        rank=rank, alpha=alpha, targets=list(targets), layers=list(layers), task=task, name=name
    )
    w = {}
    for layer in layers:
        for t in targets:
            p = module_path(layer, t)
            out_dims, in_dims = get_module(model, p).weight.shape
            w[f"{p}.lora_a"] = mx.array(rng.normal(0, scale, (rank, in_dims)).astype(np.float32))
            w[f"{p}.lora_b"] = mx.array(rng.normal(0, scale, (out_dims, rank)).astype(np.float32))
    return cfg, w


def save_random_adapters(root: Path, model, n: int = 4, **kw) -> list[Path]:
    dirs = []
    for i in range(n):
        cfg, w = random_adapter(model, seed=100 + i, task=TASKS[i % 4], name=f"ad{i}", **kw)
        dirs.append(save_adapter(Path(root) / f"ad{i}", cfg, w))
    return dirs


def save_model_dir(path: Path, model) -> Path:
    """An MLX model dir with a char-level HF tokenizer that also knows upper case."""
    return train_save_model_dir(path, model, chars=CHARS)
