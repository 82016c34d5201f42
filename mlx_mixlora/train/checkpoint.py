"""Training checkpoints: everything a resumed run needs to end bit-identical.

A checkpoint is a directory ``step_0000100/`` (written atomically) holding the
LoRA weights and the optimizer state as safetensors, and a ``state.json`` with
the step, the training config and a fingerprint of the tokenized data. Data
order is a function of (seed, epoch) and dropout noise of (seed, step), so the
step alone says where to continue. Older checkpoints beyond `keep` are pruned.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import MixloraError
from ..io import (
    atomic_dir,
    check_safetensors_header,
    read_json,
    remove_published,
    sweep_stale,
    write_json,
)
from ..validate import checkpoint_step, finite_tensors
from .data import Tokenized

STATE_FILE = "state.json"
# config fields that do not change the trained adapter, so may differ on resume
RESUME_NEUTRAL = {
    "val_every", "val_batches", "save_every", "keep_checkpoints", "steps_per_report", "name", "task",
}  # fmt: skip


def data_fingerprint(items: list[Tokenized]) -> str:
    h = hashlib.sha256()
    for t in items:
        h.update(len(t.ids).to_bytes(4, "little") + t.target_start.to_bytes(4, "little"))
        h.update(b"".join(int(i).to_bytes(4, "little", signed=True) for i in t.ids))
    return h.hexdigest()[:16]


def default_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoints")


def save(
    ckpt_dir: Path,
    step: int,
    lora: dict[str, mx.array],
    optimizer_state: Any,
    info: dict,
    keep: int,
) -> Path:
    """Write `step_XXXXXXX/` atomically, then prune to the newest `keep`."""
    dst = Path(ckpt_dir) / f"step_{step:07d}"
    sweep_stale(ckpt_dir, "step_*")  # temp dirs of checkpoints a killed run was writing
    with atomic_dir(dst, overwrite=True) as tmp:
        mx.save_safetensors(str(tmp / "adapters.safetensors"), lora)
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer_state)))
        write_json(tmp / STATE_FILE, {**info, "step": step})
    for old in list_steps(ckpt_dir)[:-keep]:  # a kill while pruning leaves no partial step_*
        remove_published(old)
    return dst


def list_steps(ckpt_dir: str | Path) -> list[Path]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file())


def latest(ckpt_dir: str | Path) -> Path | None:
    steps = list_steps(ckpt_dir)
    return steps[-1] if steps else None


def load(
    path: Path, config: dict, fingerprint: str, total: int | None = None
) -> tuple[int, dict, dict, dict]:
    """(step, lora weights, optimizer state tree, info); refuses a mismatched or tampered run."""
    info = read_json(path / STATE_FILE, what="checkpoint state")
    checkpoint_step(info.get("step"), path, total)
    if (
        not isinstance(info.get("config", {}), dict)
        or not isinstance(info.get("history", []), list)
        or not isinstance(info.get("metrics", []), list)
    ):
        raise MixloraError(f"{path / STATE_FILE}: malformed checkpoint state")
    saved = {k: v for k, v in info.get("config", {}).items() if k not in RESUME_NEUTRAL}
    now = {k: v for k, v in config.items() if k not in RESUME_NEUTRAL}
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise MixloraError(
            f"cannot resume from {path}: training options differ from the checkpoint's ({', '.join(diff)})"
        )
    if info.get("data_fingerprint") != fingerprint:
        raise MixloraError(
            f"cannot resume from {path}: the training data differs from the checkpoint's"
        )
    arrays = {}
    for name in ("adapters", "optimizer"):
        f = path / f"{name}.safetensors"
        check_safetensors_header(f)
        arrays[name] = finite_tensors(mx.load(str(f)), str(f))
    opt = tree_unflatten(list(arrays["optimizer"].items()))
    return int(info["step"]), arrays["adapters"], opt, info
