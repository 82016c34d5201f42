"""Where a task's rows come from: the hub, local files, or a synthetic generator.

All three give rows in the dataset's own schema. Splits are deterministic and
disjoint: the hub and split-named local files keep their own splits; a single
local file and the synthetic stream assign each row to a split by a hash of its
input text, so the same text can never land in two splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from pathlib import Path

from ..errors import MixloraError
from . import synthetic
from .spec import Task

SPLITS = ("train", "validation", "test")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
# Share of rows per split when a split is assigned by hash (train / validation / test).
_HASH_BOUNDS = (80, 90)


def hash_split(task: Task, row: dict) -> str:
    """The split a row belongs to, from a stable hash of its input fields only."""
    key = "\x1f".join(str(row.get(f, "")) for f in task.fields)
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100
    if bucket < _HASH_BOUNDS[0]:
        return "train"
    return "validation" if bucket < _HASH_BOUNDS[1] else "test"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise MixloraError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def load_rows(
    task: Task, source: str, split: str, n: int | None = None, seed: int = 0
) -> list[dict]:
    """Rows of `task` from `source` ("synthetic", "hub", or a file/dir path)."""
    _check_split(split)
    if n is not None and n < 1:
        raise MixloraError(f"number of examples must be >= 1, got {n}")
    if source == "synthetic":
        rows = synthetic_rows(task, split, n or 1000, seed)
    elif source == "hub":
        rows = hub_rows(task, split)
    else:
        rows = local_rows(task, Path(source), split)
    if not rows:
        raise MixloraError(f"task {task.name!r}: no {split} rows in {source}")
    where = f"task {task.name!r} ({source}, {split})"
    task.check_row(rows[0], where)
    if n is not None and source != "synthetic":
        rows = _sample(rows, n, seed)
    for row in rows:  # fail early, with one line, on labels outside the label map
        task.target_text(row)
    return rows


def _sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    if n >= len(rows):
        return rows
    idx = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in idx]


def synthetic_rows(task: Task, split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` rows of `split` from the task's generator; disjoint across splits by hash."""
    _check_split(split)
    if not task.synthetic:
        raise MixloraError(
            f"task {task.name!r} has no synthetic generator; use a hub or local source"
        )
    if task.synthetic not in synthetic.GENERATORS:
        raise MixloraError(f"task {task.name!r}: unknown generator {task.synthetic!r}")
    rows: list[dict] = []
    limit = 200 * n + 10_000
    for i, row in enumerate(synthetic.stream(task.synthetic, seed)):
        if i >= limit:
            raise MixloraError(f"generator {task.synthetic!r} cannot fill {n} {split} rows")
        if hash_split(task, row) == split:
            rows.append(row)
            if len(rows) == n:
                return rows
    return rows  # unreachable: the stream is endless


def hub_rows(task: Task, split: str) -> list[dict]:
    """One split of the task's Hugging Face dataset; offline, one clear error line."""
    if task.hub is None:
        raise MixloraError(
            f"task {task.name!r} has no hub dataset; use a local or synthetic source"
        )
    hub_split = task.hub.splits.get(split, split)
    label = task.hub.path + (f"/{task.hub.name}" if task.hub.name else "")
    try:
        import datasets

        ds = datasets.load_dataset(task.hub.path, task.hub.name, split=hub_split)
    except Exception as e:  # offline, missing or renamed datasets raise many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MixloraError(
            f"could not load hub dataset {label} (split {hub_split}): {first} "
            "(offline? use --data synthetic or a local directory)"
        ) from None
    return [dict(r) for r in ds]


def local_rows(task: Task, path: Path, split: str) -> list[dict]:
    """Rows from a data file, or a directory holding split files or one file per task."""
    if not path.exists():
        raise MixloraError(f"data path not found: {path} (use 'synthetic', 'hub' or a file/dir)")
    if path.is_file():
        return [r for r in read_table(path) if hash_split(task, r) == split]
    task_path = _find_data(path, task.name)
    if task_path is not None:
        return local_rows(task, task_path, split)
    split_files = {
        name: f
        for name, aliases in _SPLIT_ALIASES.items()
        for alias in aliases
        if (f := _find_data(path, alias)) is not None and f.is_file()
    }
    if split in split_files:
        return read_table(split_files[split])
    if split_files:  # never re-split a split file: its rows would leak into other splits
        raise MixloraError(
            f"{path}: has {sorted(split_files)} split files but no {split!r} file for task {task.name!r}"
        )
    files = [p for p in sorted(path.iterdir()) if p.suffix in DATA_SUFFIXES]
    if len(files) == 1:
        return local_rows(task, files[0], split)
    raise MixloraError(
        f"{path}: no data for task {task.name!r} split {split!r}: expected {task.name}/ or "
        f"{task.name}.jsonl, or {split}.jsonl / .parquet / .csv, or exactly one data file"
    )


def _find_data(directory: Path, stem: str) -> Path | None:
    if (directory / stem).is_dir():
        return directory / stem
    for suffix in DATA_SUFFIXES:
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    return None


def read_table(path: Path) -> list[dict]:
    """Read a jsonl / json-lines / parquet / csv file into a list of dicts."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            rows = []
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        obj = json.loads(line)
                        if not isinstance(obj, dict):
                            raise MixloraError(f"{path}:{i}: each line must be a JSON object")
                        rows.append(obj)
            return rows
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return [dict(r) for r in csv.DictReader(f)]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except json.JSONDecodeError as e:
        raise MixloraError(f"{path} is not valid JSON lines: {e}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MixloraError(f"could not read {path}: {e}") from None
    except Exception as e:  # pyarrow's errors (ArrowInvalid, ...) on corrupt parquet
        if type(e).__module__.startswith("pyarrow"):
            raise MixloraError(f"{path} is not a readable parquet file: {e}") from None
        raise
    raise MixloraError(
        f"{path}: unsupported data file type {suffix!r}; use {', '.join(DATA_SUFFIXES)}"
    )
