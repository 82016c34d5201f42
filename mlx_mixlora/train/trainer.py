"""The training loop: one compiled step, reproducible order, atomic outputs.

The step (forward, target-only loss, backward, accumulation, clipping, AdamW)
is one `mx.compile`d function whose state is the model, the optimizer and the
mx.random key. Data order depends only on (seed, epoch) and the random key is
reseeded from (seed, step) before every step, so a resumed run replays exactly
the batches, dropout masks and updates of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map, tree_unflatten
from tqdm import tqdm

from ..adapter_format import AdapterConfig, save_adapter
from ..cpu.streams import blas_threads, default_streams
from ..errors import MixloraError
from ..io import output_path
from ..lora import adapter_weights, attach_lora, detach_lora, model_identity, n_layers, parse_layers
from ..model import base_identity, load
from ..validate import rank_fits
from . import checkpoint, distributed
from .batching import Batch, batches_per_epoch, epoch_rows, iterate_rows, make_batch, run_totals
from .config import TrainConfig
from .data import DataStats, Tokenized, load_examples, prepare
from .loss import target_loss
from .metrics import METRICS_FILE, MetricsLog, metrics_text, train_line, val_line
from .parallel import SplitStep

# options that shape the log, not the adapter: left out of the adapter's recorded options
LOG_ONLY = ("name", "task", "steps_per_report")


@dataclass
class TrainResult:
    adapter_dir: Path | None
    config: AdapterConfig
    steps: int
    train_loss: float | None
    val_loss: float | None
    tokens: int
    seconds: float
    tokens_per_second: float
    peak_memory_gb: float
    data: DataStats
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    metrics: list[dict] = field(default_factory=list)  # the records of metrics.jsonl


@dataclass
class _Plan:
    """Everything one run needs besides the model's state: data, configs, outputs, limits."""

    model: nn.Module
    items: list[Tokenized]
    val_items: list[Tokenized] | None
    cfg: TrainConfig
    acfg: AdapterConfig
    out: Path | None
    overwrite: bool
    ckpt_dir: Path | None
    fingerprint: str
    total: int
    stats: DataStats
    stop_at: int | None
    progress: bool
    log_as: Path | None = None  # the adapter's final path, where `out` is a temp dir


@dataclass
class _Window:
    """Since the last report line: summed train loss over `steps`; steps, tokens and
    seconds timed in this process (a resumed run restores only the loss part)."""

    loss: float = 0.0
    steps: int = 0
    timed_steps: int = 0
    tokens: int = 0
    seconds: float = 0.0


def _arrays(b: Batch) -> tuple:
    opt = lambda a: None if a is None else mx.array(a)  # noqa: E731
    return (
        mx.array(b.tokens),
        mx.array(b.labels),
        opt(b.target_idx),
        mx.array(b.weights),
        opt(b.positions),
        opt(b.segments),
    )


def step_seed(seed: int, step: int) -> int:
    """Per-step mx.random seed: dropout noise depends only on (seed, step), so resume needs no RNG state."""
    return (seed * 1_000_003 + step * 7_919) % (1 << 63)


def make_schedule(cfg: TrainConfig, total: int):
    warm = min(cfg.warmup, max(total - 1, 0))
    decay = optim.cosine_decay(cfg.lr, max(1, total - warm), cfg.min_lr)
    if warm == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, cfg.lr, warm), decay], [warm])


def auto_pack(items: list[Tokenized], max_seq_len: int) -> bool:
    """Pack only short examples: long ones pad little when length-sorted, and packing them
    makes attention work on masked cross-example scores (25% slower on the seed-like benchmark)."""
    lens = sorted(len(t.ids) for t in items)
    return 4 * lens[len(lens) // 2] <= max_seq_len


def total_steps(cfg: TrainConfig, items: list[Tokenized]) -> int:
    if cfg.iters is not None:
        return cfg.iters
    per_epoch = batches_per_epoch(items, cfg.batch_size, cfg.max_seq_len, cfg.pack, cfg.seed)
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def evaluate(model: nn.Module, items: list[Tokenized], cfg: TrainConfig) -> float:
    """Mean target CE over (up to `val_batches` of) a validation set, dropout off."""
    was_training = model.training
    model.eval()
    loss_fn = mx.compile(partial(target_loss, model))
    total, n = 0.0, 0.0
    plan = epoch_rows(items, cfg.batch_size, cfg.max_seq_len, cfg.pack, cfg.seed, 0)
    if cfg.val_batches > 0:
        plan = plan[: cfg.val_batches]
    for rows in plan:
        loss, ntok = loss_fn(*_arrays(make_batch(items, rows, cfg.max_seq_len, cfg.pack)))
        mx.eval(loss, ntok)
        total += loss.item() * ntok.item()
        n += ntok.item()
    model.train(was_training)
    return total / max(n, 1.0)


def _validate(model: nn.Module, items: list[Tokenized], cfg: TrainConfig, n_streams: int) -> float:
    """`evaluate` with OpenBLAS's threads back at one per core (the split step sets 1)."""
    with blas_threads(os.cpu_count() or 1) if n_streams > 1 else contextlib.nullcontext():
        return evaluate(model, items, cfg)


def plan_line(cfg: TrainConfig, items: list[Tokenized], total: int) -> str:
    """What the run will train on: examples, tokens, steps, epochs (before any work)."""
    per_step = cfg.batch_size * cfg.grad_accum
    examples, tokens = run_totals(
        items, cfg.batch_size, cfg.max_seq_len, cfg.seed, total * cfg.grad_accum
    )
    rows = "packed into rows" if cfg.pack else "one per row"
    return (
        f"plan: {total} steps x {per_step} examples ({rows}) = {examples} examples, "
        f"{tokens} tokens, {examples / len(items):.2f} epochs of {len(items)} examples"
    )


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def train_adapter(
    model: str | Path | tuple[nn.Module, Any],
    data: str | Path | list[dict],
    out_dir: str | Path | None,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    *,
    val_data: str | Path | list[dict] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    base: dict | None = None,
    checkpoint_dir: str | Path | None = None,
    stop_at: int | None = None,
    detach: bool = True,
    log_as: str | Path | None = None,
) -> TrainResult:
    """Train one LoRA adapter and write it to `out_dir` in the adapter format.

    `model` is an MLX model dir or an already loaded `(model, tokenizer)`; a
    loaded model gets its LoRA layers removed again afterwards (`detach`), so
    one base can train several adapters. `stop_at` ends the run after that step
    with a checkpoint and no adapter (a time-boxed or interrupted run);
    `resume` continues from the newest checkpoint. `out_dir=None` skips writing.
    `log_as` is the path the log names for the adapter when `out_dir` lies in a
    temp dir that the caller renames afterwards.
    """
    cfg = (cfg or TrainConfig()).validate()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        output_path(out, overwrite)  # before loading the model and training
    if isinstance(model, (str, Path)):
        base = base or base_identity(model)
        model, tokenizer = load(model)
        owned = True
    else:
        model, tokenizer = model
        base = base or model_identity(model)
        owned = False

    rank_fits(cfg.rank, cfg.targets, base)
    items, stats = prepare(
        load_examples(data), tokenizer, cfg.max_seq_len, cfg.mask_prompt, cfg.long_policy
    )
    _log(
        progress,
        f"data: {stats.examples} examples, {stats.tokens} tokens ({stats.targets} loss targets); "
        f"over max_seq_len={cfg.max_seq_len} (policy {cfg.long_policy}): "
        f"{stats.truncated} truncated, {stats.skipped} skipped",
    )
    if cfg.pack is None:
        cfg = dataclasses.replace(cfg, pack=auto_pack(items, cfg.max_seq_len))
        _log(progress, f"batching: {'packed rows' if cfg.pack else 'length-sorted batches'} (auto)")
    val_items = None
    if val_data is not None:
        val_items, vstats = prepare(
            load_examples(val_data), tokenizer, cfg.max_seq_len, cfg.mask_prompt, cfg.long_policy
        )
        _log(
            progress,
            f"validation: {len(val_items)} examples ({vstats.truncated} truncated, {vstats.skipped} skipped)",
        )

    layers = parse_layers(cfg.layers, n_layers(model))
    acfg = AdapterConfig(
        rank=cfg.rank,
        alpha=cfg.alpha,
        targets=list(cfg.targets),
        layers=layers,
        use_rslora=cfg.use_rslora,
        dropout=cfg.dropout,
        base_model=base,
        name=cfg.name,
        task=cfg.task,
    )
    if cfg.name is not None:
        AdapterConfig.from_dict(acfg.to_dict())  # validates the name early

    ckpt_dir = (
        Path(checkpoint_dir) if checkpoint_dir else (checkpoint.default_dir(out) if out else None)
    )
    fingerprint = checkpoint.data_fingerprint(items)
    total = total_steps(cfg, items)
    if progress:  # counting the plan walks every batch: only when someone reads it
        _log(progress, plan_line(cfg, items, total))

    plan = _Plan(
        model, items, val_items, cfg, acfg, out, overwrite, ckpt_dir, fingerprint, total, stats,
        stop_at, progress, Path(log_as) if log_as is not None else None,
    )  # fmt: skip
    mx.random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    attach_lora(model, acfg)
    try:
        return _run(plan, resume)
    finally:
        if detach and not owned:
            detach_lora(model)


def _run(plan: _Plan, resume: bool) -> TrainResult:
    model, items, cfg, ckpt_dir = plan.model, plan.items, plan.cfg, plan.ckpt_dir
    total, progress = plan.total, plan.progress
    optimizer = optim.AdamW(learning_rate=make_schedule(cfg, total), weight_decay=cfg.weight_decay)
    start = 0
    history: list[dict] = []
    records: list[dict] = []
    window = _Window()
    if resume:
        last = checkpoint.latest(ckpt_dir) if ckpt_dir else None
        if last is None:
            raise MixloraError(f"--resume: no checkpoint found in {ckpt_dir}")
        start, lora, opt_state, info = checkpoint.load(last, cfg.to_dict(), plan.fingerprint, total)
        model.update(_nest(lora))
        optimizer.state = opt_state
        history = list(info.get("history", []))
        records = [
            r for r in info.get("metrics", []) if isinstance(r, dict) and r.get("step", 0) <= start
        ]
        window = _restore_window(info.get("report_window"))
        _log(progress, f"resuming from {last} (step {start} of {total})")
    optimizer.init(model.trainable_parameters())
    model.train()

    loss = partial(target_loss, grad_checkpoint=cfg.grad_checkpoint)
    state = [model.state, optimizer.state, mx.random.state]
    accum, clip = cfg.grad_accum, cfg.clip_grad
    n_streams = 1 if cfg.dropout > 0 else (cfg.streams or default_streams())

    def finish(grad, prev_grad, do_update):
        if prev_grad is not None:
            grad = tree_map(lambda a, b: a + b, grad, prev_grad)
        if do_update:
            if accum > 1:
                grad = tree_map(lambda g: g / accum, grad)
            if clip:
                grad, _ = optim.clip_grad_norm(grad, clip)
            optimizer.update(model, grad)
            grad = None
        return grad

    group = distributed.world()
    if group is not None:  # data parallel: this rank's shard, gradients summed over ranks
        distributed.check_batch(cfg.batch_size, group)
        single = SplitStep(model, loss, 1)

        def step(rows, prev_grad, do_update):
            b = make_batch(items, distributed.shard_rows(rows, group), cfg.max_seq_len, cfg.pack)
            lvalue, ntok, grad = distributed.all_reduce(*single([_arrays(b)]), group)
            return lvalue, ntok, finish(grad, prev_grad, do_update), b.n_tokens * group.size()

        n_streams = 1
        if group.rank() != 0:  # only rank 0 writes and reports
            plan = dataclasses.replace(plan, out=None, ckpt_dir=None, progress=False)
    elif n_streams == 1:
        loss_vg = nn.value_and_grad(model, loss)

        @partial(mx.compile, inputs=state, outputs=state)
        def compiled(arrays, prev_grad, do_update):
            (lvalue, ntok), grad = loss_vg(model, *arrays)
            return lvalue, ntok, finish(grad, prev_grad, do_update)

        def step(rows, prev_grad, do_update):
            b = make_batch(items, rows, cfg.max_seq_len, cfg.pack)
            return (*compiled(_arrays(b), prev_grad, do_update), b.n_tokens)

    else:  # see parallel.py: one compiled value-and-grad per CPU stream
        split = SplitStep(model, loss, n_streams)

        def step(rows, prev_grad, do_update):
            k = min(n_streams, len(rows))
            cuts = [round(i * len(rows) / k) for i in range(k + 1)]
            parts = [
                make_batch(items, rows[a:b], cfg.max_seq_len, cfg.pack)
                for a, b in zip(cuts, cuts[1:], strict=False)
            ]
            lvalue, ntok, grad = split([_arrays(b) for b in parts])
            return lvalue, ntok, finish(grad, prev_grad, do_update), sum(b.n_tokens for b in parts)

    batches = iterate_rows(
        items, cfg.batch_size, cfg.max_seq_len, cfg.pack, cfg.seed, start=start * accum
    )
    with blas_threads(1) if n_streams > 1 else contextlib.nullcontext():
        return _loop(
            plan, optimizer, state, step, batches, start, history, n_streams, records, window
        )


def _restore_window(d) -> _Window:
    if not isinstance(d, dict):
        return _Window()
    try:
        return _Window(float(d["loss"]), int(d["steps"]))
    except (KeyError, TypeError, ValueError):
        return _Window()


def _loop(
    plan: _Plan,
    optimizer,
    state,
    step,
    batches,
    start: int,
    history: list,
    n_streams: int,
    records: list[dict],
    window: _Window,
) -> TrainResult:
    model, cfg, val_items, total = plan.model, plan.cfg, plan.val_items, plan.total
    ckpt_dir, stop_at, progress = plan.ckpt_dir, plan.stop_at, plan.progress
    accum = cfg.grad_accum
    checkpointing = ckpt_dir is not None and bool(cfg.save_every or stop_at)
    metrics = MetricsLog(ckpt_dir / METRICS_FILE if checkpointing else None, records)
    done_tokens = 0
    if start:  # tokens the steps before the checkpoint trained on, for `Trained Tokens`
        done_tokens = run_totals(
            plan.items, cfg.batch_size, cfg.max_seq_len, cfg.seed, start * accum
        )[1]
    mx.reset_peak_memory()
    bar = None

    def say(msg: str) -> None:
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        elif progress:
            _log(progress, msg)

    if progress:
        bar = tqdm(
            total=total,
            initial=start,
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    tokens = 0
    timed_tokens, timed_s, seconds = 0, 0.0, 0.0
    train_loss = val_loss = None
    end = total if stop_at is None else min(total, stop_at)
    it = start
    for it in range(start + 1, end + 1):
        tic, cpu_tic = time.perf_counter(), time.process_time()
        mx.random.seed(step_seed(cfg.seed, it))
        grad, losses, step_tokens = None, [], 0
        for micro in range(accum):
            loss, _, grad, n_tok = step(next(batches), grad, micro == accum - 1)
            losses.append(loss)
            step_tokens += n_tok
            if grad is not None:
                mx.eval(grad, loss)
        mx.eval(state, losses)
        dt = time.perf_counter() - tic
        seconds += dt
        tokens += step_tokens
        if it > start + 1 or end - start == 1:
            timed_tokens += step_tokens
            timed_s += dt
        if it == start + 2 and end > it:
            say(
                f"estimated time: {_duration(seconds + (end - it) * dt)} for {end - start} steps "
                f"({dt:.2f} s/step; the first step took {seconds - dt:.1f} s with compilation)"
            )
        train_loss = float(sum(x.item() for x in losses) / accum)
        if not math.isfinite(train_loss):
            if bar is not None:
                bar.close()
            raise MixloraError(
                f"training loss is not finite ({train_loss}) at step {it}; no adapter written. "
                "Lower --lr or check the data"
            )
        rec = {
            "step": it,
            "seconds": dt,
            "cpu_seconds": time.process_time() - cpu_tic,
            "loss": train_loss,
            "lr": float(optimizer.learning_rate.item()),
            "tokens": step_tokens,
        }
        window.loss += train_loss
        window.steps += 1
        window.timed_steps += 1
        window.tokens += step_tokens
        window.seconds += dt
        mrec: dict[str, Any] = {"step": it}
        if it % cfg.steps_per_report == 0 or it == end:
            mrec.update(
                train_loss=window.loss / window.steps,
                lr=rec["lr"],
                its_per_s=window.timed_steps / window.seconds,
                tokens_per_s=window.tokens / window.seconds,
                trained_tokens=done_tokens + tokens,
                peak_mem_gb=mx.get_peak_memory() / 1e9,
            )
            say(train_line(mrec))
            window = _Window()
        if val_items is not None and (it == total or (cfg.val_every and it % cfg.val_every == 0)):
            vtic = time.perf_counter()
            val_loss = rec["val_loss"] = mrec["val_loss"] = _validate(
                model, val_items, cfg, n_streams
            )
            say(val_line(it, val_loss, time.perf_counter() - vtic))
        if len(mrec) > 1:
            metrics.add(mrec)
        history.append(rec)
        if bar is not None:
            tps = timed_tokens / timed_s if timed_s else step_tokens / dt
            post = {
                "loss": f"{train_loss:.3f}",
                "tok/s": f"{tps:.0f}",
                "peak": f"{mx.get_peak_memory() / 2**30:.2f}G",
            }
            if val_loss is not None:
                post["val"] = f"{val_loss:.3f}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        if (
            ckpt_dir
            and it < total
            and ((cfg.save_every and it % cfg.save_every == 0) or it == stop_at)
        ):
            info = {
                "config": cfg.to_dict(),
                "data_fingerprint": plan.fingerprint,
                "total_steps": total,
                "history": history,
                "metrics": metrics.records,
                "report_window": {"loss": window.loss, "steps": window.steps},
            }
            checkpoint.save(
                ckpt_dir, it, adapter_weights(model), optimizer.state, info, cfg.keep_checkpoints
            )
    if bar is not None:
        bar.close()
    stopped = it < total
    peak = mx.get_peak_memory() / 2**30
    tps = timed_tokens / timed_s if timed_s else 0.0
    acfg, stats, out = plan.acfg, plan.stats, plan.out
    acfg.extra = {
        "train": {k: v for k, v in cfg.to_dict().items() if k not in LOG_ONLY},
        "steps": total,
        "final_train_loss": train_loss,
        "final_val_loss": val_loss,
        "tokens": tokens,
        "tokens_per_second": round(tps, 2),
        "streams": n_streams,
        "data": {
            "examples": stats.examples,
            "truncated": stats.truncated,
            "skipped": stats.skipped,
            "fingerprint": plan.fingerprint,
        },
    }
    written = None
    if out is not None and not stopped:
        written = save_adapter(
            out,
            acfg,
            adapter_weights(model),
            overwrite=plan.overwrite,
            extra_files={METRICS_FILE: metrics_text(metrics.records)},
        )
        shown = plan.log_as or written
        _log(progress, f"adapter written to {shown} (training record: {METRICS_FILE})")
    return TrainResult(
        adapter_dir=written,
        config=acfg,
        steps=it,
        train_loss=train_loss,
        val_loss=val_loss,
        tokens=tokens,
        seconds=seconds,
        tokens_per_second=tps,
        peak_memory_gb=peak,
        data=stats,
        history=history,
        stopped_early=stopped,
        metrics=metrics.records,
    )


def _nest(flat: dict[str, mx.array]) -> dict:
    return tree_unflatten(list(flat.items()))
