"""AdaMerging: merge coefficients learned by gradient descent on unlabelled prompts.

λ (one per adapter, per adapter × layer, or per adapter × layer × module; see
`coefficients`) is fitted by Adam through the merged forward
``x·Wᵀ + Σᵢ λᵢ·sᵢ·(x·Aᵢᵀ)·Bᵢᵀ`` to minimise the prediction entropy of
`objectives.entropy` on calibration prompts (Yang et al., ICLR 2024), clamped to
[0, 1] after each step as the paper does. Full-batch and without randomness,
so a run is deterministic on a given machine. The same loop with
`objective="cross_entropy"` fits λ to labelled answers (a supervised baseline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..modules import n_layers
from ..scoring import encode_continuation, greedy_generate
from ..tasks import resolve_task
from .calibration import CalibExample, per_task_counts
from .coefficients import (
    CoefficientTable,
    set_coefficients,
    table_for,
    weighted_adapters,
)
from .methods import LEARN_LR, LEARN_STEPS
from .objectives import OBJECTIVES, build_batch, teacher_logprobs

DEFAULT_STEPS = LEARN_STEPS
DEFAULT_LR = LEARN_LR
DEFAULT_INIT = 0.3  # AdaMerging's starting λ
BOUNDS = (0.0, 1.0)
COMPILE = True  # compile the loss-and-gradient step (fuses the elementwise work)


@dataclass
class Learned:
    """Learned coefficients and how they were found."""

    table: CoefficientTable
    lam: mx.array
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    calib: dict[str, int] = field(default_factory=dict)  # calibration prompts per task

    def info(self) -> dict:
        return {
            "granularity": self.table.granularity,
            "coefficients": self.lam.tolist(),
            "calibration_examples": self.calib,
            "steps": len(self.losses) - 1,
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "seconds": round(self.seconds, 2),
        }


def teacher_weights(adapters: Sequence[Adapter], task: str) -> mx.array:
    """One-hot on the adapter made for `task`; the mean merge when no adapter is."""
    own = own_adapter(adapters, task)
    if own is None:
        return mx.full((len(adapters),), 1.0 / len(adapters))
    return (mx.arange(len(adapters)) == own).astype(mx.float32)


def own_adapter(adapters: Sequence[Adapter], task: str) -> int | None:
    """Index of the adapter made for `task` (by its task, then its name)."""
    for key in ("task", "name"):
        for i, ad in enumerate(adapters):
            if getattr(ad, key) == task:
                return i
    return None


def teacher_continuations(
    model, tokenizer, adapters, layers, calib: Sequence[CalibExample]
) -> list[list[int] | None]:
    """For prompts without labels: the greedy continuation of the task's own adapter.

    Unlabelled (what the adapter says, not a reference), these are the positions
    the generation entropy is measured on. A task no adapter owns uses the mean merge.
    """
    table = table_for(adapters, "task", 1)
    out: list[list[int] | None] = [None] * len(calib)
    by_task: dict[str, list[int]] = {}
    for i, c in enumerate(calib):
        if not c.labels:
            by_task.setdefault(c.task, []).append(i)
    for task, idx in by_task.items():
        set_coefficients(layers, table, teacher_weights(adapters, task))
        try:
            max_new = resolve_task(task).max_new_tokens
        except MixloraError:
            max_new = 32
        texts = greedy_generate(model, tokenizer, [calib[i].prompt for i in idx], max_new)
        for i, text in zip(idx, texts, strict=True):
            out[i] = _with_eos(
                tokenizer, encode_continuation(tokenizer, " " + text) if text else []
            )
    return out


def learn_coefficients(
    model,
    tokenizer,
    adapters: Sequence[Adapter],
    calib: Sequence[CalibExample],
    granularity: str = "layer",
    objective: str = "entropy",
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    init: float = DEFAULT_INIT,
    log: Callable[[str], None] | None = None,
) -> Learned:
    """Fit λ on `calib` (see the module docstring); the model is left as it was."""
    if not calib:
        raise MixloraError("learned merges need calibration prompts")
    if steps < 1 or not (lr > 0 and math.isfinite(lr)):
        raise MixloraError(f"need steps >= 1 and a finite lr > 0, got {steps}, {lr}")
    if objective not in OBJECTIVES:
        raise MixloraError(f"objective must be one of {', '.join(OBJECTIVES)}")
    loss_of = OBJECTIVES[objective]
    t0 = time.perf_counter()
    table = table_for(adapters, granularity, n_layers(model))
    with weighted_adapters(model, adapters) as layers:
        unlabelled = objective != "cross_entropy"
        if unlabelled:
            conts = teacher_continuations(model, tokenizer, adapters, layers, calib)
        else:
            conts = [answer_ids(tokenizer, c) for c in calib]
        batch = build_batch(tokenizer, calib, conts, labels_first=unlabelled)
        if objective == "distill":
            _teachers(model, adapters, layers, batch)

        def loss_fn(lam: mx.array) -> mx.array:
            set_coefficients(layers, table, lam)
            return loss_of(model, batch)

        # one trace for all steps: λ is the only input, the model and batch are constants
        value_and_grad = mx.value_and_grad(loss_fn)
        if COMPILE:
            value_and_grad = mx.compile(value_and_grad)
        lam = table.full(float(init))
        m = mx.zeros_like(lam)
        v = mx.zeros_like(lam)
        b1, b2, eps = 0.9, 0.999, 1e-8
        losses = []
        for step in range(1, steps + 1):
            loss, g = value_and_grad(lam)
            mx.eval(loss, g)
            losses.append(finite(float(loss), "loss"))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            lam = lam - lr * (m / (1 - b1**step)) / (mx.sqrt(v / (1 - b2**step)) + eps)
            lam = mx.clip(lam, *BOUNDS)
            mx.eval(lam)
            if log is not None and (step == 1 or step % 10 == 0 or step == steps):
                log(f"step {step}/{steps}: {objective} {losses[-1]:.4f}")
        losses.append(finite(float(loss_fn(lam)), "loss"))
    if not bool(mx.all(mx.isfinite(lam)).item()):
        raise MixloraError("learned merge coefficients are not finite; nothing written")
    return Learned(table, lam, losses, time.perf_counter() - t0, per_task_counts(calib))


def _teachers(model, adapters, layers, batch) -> None:
    """Each block's log-probs under its task's own adapter (mean merge if none owns it)."""
    table = table_for(adapters, "task", 1)
    for part in batch.parts:  # a block holds one task's rows
        set_coefficients(layers, table, teacher_weights(adapters, part.task))
        part.teacher = teacher_logprobs(model, part)
        mx.eval(part.teacher)


def answer_ids(tokenizer, c: CalibExample) -> list[int]:
    if not c.answer:
        raise MixloraError(f"calibration prompt of task {c.task!r} has no answer (completion)")
    ids = encode_continuation(tokenizer, c.answer if c.answer[:1].isspace() else " " + c.answer)
    return _with_eos(tokenizer, ids)


def _with_eos(tokenizer, ids: list[int]) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return ids + ([int(eos)] if eos is not None else [])


def finite(x: float, what: str) -> float:
    if not math.isfinite(x):
        raise MixloraError(f"the learned merge's {what} became {x}; nothing written")
    return x
