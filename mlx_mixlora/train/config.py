"""Training recipe: one dataclass, loadable from YAML, validated up front."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..adapter_format import ATTENTION_TARGETS, TARGET_PARENT
from ..errors import MixloraError
from ..validate import MAX_SEED, field_types, mapping, number
from .data import LONG_POLICIES


@dataclass
class TrainConfig:
    """Everything that decides the trained adapter (and, with the data, fixes it bit for bit)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False
    targets: list[str] = field(default_factory=lambda: list(ATTENTION_TARGETS))
    layers: str = "all"
    iters: int | None = None  # optimizer steps; None → derived from epochs
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 512
    lr: float = 2e-4
    min_lr: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.0
    clip_grad: float | None = 1.0
    seed: int = 0
    mask_prompt: bool = True
    pack: bool | None = None  # None = auto: pack when the median example fills <= 1/4 of a row
    long_policy: str = "truncate"
    grad_checkpoint: bool = False
    streams: int = (
        0  # CPU streams a batch is split over; 0 = auto (2 on CPU, 1 on GPU or with dropout)
    )
    steps_per_report: int = 10  # an `Iter N: Train loss ...` line and a metrics.jsonl record
    val_every: int = 0  # 0: validate only at the end (when there is validation data)
    val_batches: int = -1  # -1: the whole validation set
    save_every: int = 0  # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    name: str | None = None
    task: str | None = None

    def validate(self) -> TrainConfig:
        checks = [
            (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
            (self.alpha > 0, f"alpha must be > 0, got {self.alpha}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.iters is None or self.iters >= 1, f"iters must be >= 1, got {self.iters}"),
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.max_seq_len >= 2, f"max_seq_len must be >= 2, got {self.max_seq_len}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}"),
            (
                self.clip_grad is None or self.clip_grad > 0,
                f"clip_grad must be > 0, got {self.clip_grad}",
            ),
            (self.long_policy in LONG_POLICIES, f"long_policy must be one of {LONG_POLICIES}"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (0 <= self.streams <= 8, f"streams must be in 0..8, got {self.streams}"),
            (bool(self.targets), "targets must not be empty"),
            (0 <= self.save_every, f"save_every must be >= 0, got {self.save_every}"),
            (0 <= self.val_every, f"val_every must be >= 0, got {self.val_every}"),
            (
                self.steps_per_report >= 1,
                f"steps_per_report must be >= 1, got {self.steps_per_report}",
            ),
            (0 <= self.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED}, got {self.seed}"),
            (str(self.layers).strip() != "", "layers must not be empty (use 'all')"),
        ]
        for key in ("alpha", "dropout", "epochs", "lr", "clip_grad"):
            number(f"training config: {key}", getattr(self, key))  # NaN/inf pass `>` checks
        for key in ("min_lr", "weight_decay"):
            number(f"training config: {key}", getattr(self, key), lo=0)
        for ok, msg in checks:
            if not ok:
                raise MixloraError(f"training config: {msg}")
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        for t in self.targets:
            if t not in TARGET_PARENT:
                raise MixloraError(
                    f"target module {t!r} matches nothing in a Llama model; known: {', '.join(TARGET_PARENT)}"
                )
        self.layers = str(self.layers)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "training config") -> TrainConfig:
        mapping(d, source, (f.name for f in dataclasses.fields(cls)))
        field_types(cls, d, source)
        try:
            return cls(**d).validate()
        except TypeError as e:
            raise MixloraError(f"{source}: {e}") from None
