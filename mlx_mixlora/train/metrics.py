"""The training record: `metrics.jsonl` lines and mlx-lm-style `Iter N:` log lines.

One JSON object per line with `step` and any of `train_loss` (mean over the
steps since the last report), `val_loss`, `lr`, `its_per_s`, `tokens_per_s`,
`trained_tokens` (so far) and `peak_mem_gb` (MLX's peak, 1e9 bytes; finite numbers only; a key that does not apply
is left out, never null). During a checkpointed run the file grows beside the
checkpoints (`OUT.checkpoints/metrics.jsonl`), one whole line per `os.write`
on an O_APPEND descriptor, so a kill -9 leaves whole lines; a resumed run first
rewrites it atomically from the checkpoint's own copy of the records (steps up
to the checkpoint), so replayed steps never appear twice. The finished adapter
gets the full file (`OUT/metrics.jsonl`), written with the adapter in one atomic step.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import MixloraError
from ..io import atomic_file

METRICS_FILE = "metrics.jsonl"
KEYS = (
    "train_loss",
    "val_loss",
    "lr",
    "its_per_s",
    "tokens_per_s",
    "trained_tokens",
    "peak_mem_gb",
)


def _line(rec: dict) -> str:
    bad = [k for k in KEYS if k in rec and not math.isfinite(rec[k])]
    if bad:
        raise MixloraError(f"step {rec['step']}: {', '.join(bad)} is not finite; not recorded")
    return json.dumps(rec, separators=(",", ":")) + "\n"


def metrics_text(records: list[dict]) -> str:
    """The whole record as metrics.jsonl's text; a non-finite value is refused."""
    return "".join(_line(r) for r in records)


def write_metrics(path: str | Path, records: list[dict]) -> Path:
    """The whole record as one file, atomically (temp file, fsync, rename)."""
    text = metrics_text(records)
    with atomic_file(path, overwrite=True) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


class MetricsLog:
    """Records in memory; mirrored line by line to `live` (a path, or None for none)."""

    def __init__(self, live: Path | None, records: list[dict] | None = None) -> None:
        self.records = [dict(r) for r in records or []]
        self.live = live
        if live is not None:
            write_metrics(live, self.records)  # a fresh run starts empty; a resumed one at its step

    def add(self, rec: dict) -> None:
        line = _line(rec)
        self.records.append(rec)
        if self.live is not None:
            fd = os.open(self.live, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


def read_metrics(path: str | Path) -> list[dict]:
    """A metrics.jsonl (or an adapter dir holding one): its records, checked line by line."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise MixloraError(f"no training record: {path} not found (trained before metrics.jsonl?)")
    out = []
    for i, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise MixloraError(f"{path}:{i}: not a JSON line") from None
        ok = isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] >= 0
        if ok:
            for k in KEYS:
                v = rec.get(k)
                if v is not None and (
                    isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
                ):
                    ok = False
        if not ok:
            raise MixloraError(f"{path}:{i}: expected {{'step': int, metric: finite number, ...}}")
        out.append(rec)
    if not out:
        raise MixloraError(f"{path}: no records (the file is empty)")
    return out


def train_line(rec: dict) -> str:
    """mlx-lm's report line (`mlx_lm.lora --steps-per-report`)."""
    return (
        f"Iter {rec['step']}: Train loss {rec['train_loss']:.3f}, "
        f"Learning Rate {rec['lr']:.3e}, It/sec {rec['its_per_s']:.3f}, "
        f"Tokens/sec {rec['tokens_per_s']:.3f}, Trained Tokens {rec['trained_tokens']}, "
        f"Peak mem {rec['peak_mem_gb']:.3f} GB"
    )


def val_line(step: int, loss: float, seconds: float) -> str:
    """mlx-lm's validation line."""
    return f"Iter {step}: Val loss {loss:.3f}, Val took {seconds:.3f}s"
