"""The learned gate (seed 003): a small softmax MLP over pooled prompt features.

Features are standardised with the training set's mean/std (stored with the
gate), then Linear → GELU → Linear gives one logit per adapter. The base is
frozen and features are computed once, so training is a few hundred full-batch
AdamW steps on an [N, D] matrix: seconds on CPU.

On disk: ``gate.safetensors`` (MLP weights + feature mean/std) and ``gate.json``
(format, embedding layer, sizes, routing mode, the adapters' identities, the
base's identity and training stats). A gate loaded against a different adapter
set is refused: its outputs index adapters by position. `build_gate` fits one
on the adapters' task prompts; `load_gate_router` reads one back as a router.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..io import atomic_dir, check_safetensors_header, read_json, write_json
from ..validate import finite_tensors, gate_fields, same_base
from .embed import POOLS, FeatureRouter
from .prompts import adapter_tasks, fit_features

GATE_FORMAT = "mlx-mixlora/gate"
GATE_VERSION = 1
GATE_JSON = "gate.json"
GATE_WEIGHTS = "gate.safetensors"
MODES = ("top1", "topk", "threshold")


@dataclass
class GateConfig:
    """What a saved gate is; `adapters` are `Adapter.identity()` dicts in output order."""

    layer: int
    hidden_size: int
    gate_hidden: int
    adapters: list[dict[str, Any]]
    pool: str = "mean"  # gates saved before pooling was a choice pooled by the mean
    mode: str = "top1"
    top_k: int = 2
    threshold: float = 0.5
    base_model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    format: str = GATE_FORMAT
    format_version: int = GATE_VERSION

    @property
    def n_adapters(self) -> int:
        return len(self.adapters)


class GateMLP(nn.Module):
    """standardise → Linear → GELU → Linear → logits over adapters."""

    def __init__(self, dim: int, hidden: int, n_adapters: int):
        super().__init__()
        self.feat_mean = mx.zeros((dim,))
        self.feat_std = mx.ones((dim,))
        self.l1 = nn.Linear(dim, hidden)
        self.l2 = nn.Linear(hidden, n_adapters)
        self.freeze(keys=["feat_mean", "feat_std"], recurse=False)

    def __call__(self, x: mx.array) -> mx.array:
        x = (x - self.feat_mean) / self.feat_std
        return self.l2(nn.gelu(self.l1(x)))

    def probs(self, feats: np.ndarray) -> np.ndarray:
        return np.array(mx.softmax(self(mx.array(feats, dtype=mx.float32)), axis=-1))


def train_gate(
    feats: np.ndarray,
    labels: np.ndarray,
    n_adapters: int,
    hidden: int = 64,
    steps: int = 300,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> tuple[GateMLP, dict[str, float]]:
    """Fit the gate by full-batch AdamW on cross-entropy; returns (gate, stats)."""
    feats = np.asarray(feats, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int32)
    if feats.ndim != 2 or len(feats) != len(labels) or len(feats) == 0:
        raise MixloraError(f"gate training needs [N, D] features and N labels, got {feats.shape}")
    missing = sorted(set(range(n_adapters)) - set(labels.tolist()))
    if missing:
        raise MixloraError(f"no training prompts for adapter index {missing[0]}")
    mx.random.seed(seed)
    gate = GateMLP(feats.shape[1], hidden, n_adapters)
    gate.feat_mean = mx.array(feats.mean(axis=0))
    gate.feat_std = mx.array(feats.std(axis=0) + 1e-5)
    x, y = mx.array(feats), mx.array(labels)
    opt = optim.AdamW(learning_rate=lr, weight_decay=weight_decay)

    def loss_fn(m):
        return nn.losses.cross_entropy(m(x), y, reduction="mean")

    step = nn.value_and_grad(gate, loss_fn)
    loss = mx.array(0.0)
    for _ in range(steps):
        loss, grads = step(gate)
        opt.update(gate, grads)
        mx.eval(gate.parameters(), opt.state, loss)
    acc = float((gate.probs(feats).argmax(axis=1) == labels).mean())
    return gate, {"loss": float(loss), "train_accuracy": acc, "n": int(len(labels)), "steps": steps}


def save_gate(
    out_dir: str | Path, gate: GateMLP, config: GateConfig, overwrite: bool = False
) -> Path:
    """Write gate.safetensors + gate.json atomically."""
    arrays = dict(tree_flatten(gate.parameters()))
    finite_tensors(arrays, source=f"gate for {out_dir}")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        mx.save_safetensors(str(tmp / GATE_WEIGHTS), arrays, metadata={"format": GATE_FORMAT})
        write_json(tmp / GATE_JSON, asdict(config))
    return Path(out_dir)


def load_gate(gate_dir: str | Path) -> tuple[GateMLP, GateConfig]:
    """Read a gate dir with one clear error for any malformed part."""
    path = Path(gate_dir)
    if not path.is_dir():
        raise MixloraError(f"gate directory not found: {path}")
    d = read_json(path / GATE_JSON, what="gate config")
    gate_fields(d, str(path / GATE_JSON))
    if d.get("format") != GATE_FORMAT:
        raise MixloraError(f"{path / GATE_JSON}: format {d.get('format')!r} is not {GATE_FORMAT!r}")
    if int(d.get("format_version", 0)) > GATE_VERSION:
        raise MixloraError(
            f"{path / GATE_JSON}: format_version is newer than this mixlora supports"
        )
    try:
        config = GateConfig(**d)
    except TypeError as e:
        raise MixloraError(f"{path / GATE_JSON}: malformed gate config: {e}") from None
    if config.pool not in POOLS:
        raise MixloraError(
            f"{path / GATE_JSON}: unknown pool {config.pool!r}; use {', '.join(POOLS)}"
        )
    if config.mode not in MODES:
        raise MixloraError(
            f"{path / GATE_JSON}: unknown mode {config.mode!r}; use {', '.join(MODES)}"
        )
    wfile = path / GATE_WEIGHTS
    if not wfile.is_file():
        raise MixloraError(f"{path}: missing {GATE_WEIGHTS}")
    check_safetensors_header(wfile)
    gate = GateMLP(config.hidden_size, config.gate_hidden, config.n_adapters)
    try:
        gate.load_weights(
            list(finite_tensors(mx.load(str(wfile)), str(wfile)).items()), strict=True
        )
    except (ValueError, RuntimeError) as e:
        raise MixloraError(f"{wfile} does not match {GATE_JSON}: {e}") from None
    return gate, config


def check_gate_adapters(config: GateConfig, adapters: list[Adapter], source: str = "gate") -> None:
    """Refuse a gate trained for another adapter set (names, order and weight digests)."""
    want = [(a.get("name"), a.get("digest")) for a in config.adapters]
    have = [(a.name, a.digest) for a in adapters]
    if want != have:
        raise MixloraError(
            f"{source} was trained for adapters {[n for n, _ in want]} "
            f"(same order and weights); got {[n for n, _ in have]}"
            + (" with different weights" if [n for n, _ in want] == [n for n, _ in have] else "")
        )


class GateRouter(FeatureRouter):
    """The learned gate as a router: softmax of the MLP on pooled layer-L features."""

    name = "gate"

    def __init__(self, gate: GateMLP, config: GateConfig):
        self.gate, self.config = gate, config
        self.layer, self.n_adapters, self.pool = config.layer, config.n_adapters, config.pool

    def probs_from_features(self, feats: np.ndarray) -> np.ndarray:
        return self.gate.probs(feats)


def build_gate(
    model: Any,
    tokenizer: Any,
    adapters: list[Adapter],
    *,
    layer: int | None = None,
    tasks: Sequence[str] | None = None,
    n_per_task: int = 200,
    data: str = "synthetic",
    hidden: int = 64,
    steps: int = 300,
    lr: float = 3e-3,
    mode: str = "top1",
    top_k: int = 2,
    threshold: float = 0.5,
    base_model: dict | None = None,
    seed: int = 0,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    pool: str | None = None,
    prompts: str = "varied",
) -> GateRouter:
    """Train a gate on the adapters' task prompts; `features` skips the embedding pass."""
    layer, pool, feats, labels = fit_features(
        model,
        tokenizer,
        adapters,
        layer=layer,
        pool=pool,
        features=features,
        tasks=tasks,
        n_per_task=n_per_task,
        data=data,
        seed=seed,
        prompts=prompts,
    )
    gate, stats = train_gate(
        feats, labels, len(adapters), hidden=hidden, steps=steps, lr=lr, seed=seed
    )
    config = GateConfig(
        layer=layer,
        hidden_size=int(feats.shape[1]),
        gate_hidden=hidden,
        adapters=[a.identity() for a in adapters],
        pool=pool,
        mode=mode,
        top_k=top_k,
        threshold=threshold,
        base_model=dict(base_model or {}),
        train={
            **stats,
            # `prompts="user"`: the caller's own labelled prompts, no registry tasks
            "tasks": None if prompts == "user" else adapter_tasks(adapters, tasks),
            "data": data,
            "prompts": prompts,
            "lr": lr,
            "seed": seed,
        },
    )
    return GateRouter(gate, config)


def load_gate_router(
    gate_dir: str | Path, adapters: list[Adapter], base: dict | None = None
) -> GateRouter:
    """Load a saved gate; refuse it unless trained for exactly these adapters (and `base`)."""
    gate, config = load_gate(gate_dir)
    check_gate_adapters(config, adapters, source=str(gate_dir))
    router = GateRouter(gate, config)
    return router if base is None else same_base(router, base, gate_dir)
