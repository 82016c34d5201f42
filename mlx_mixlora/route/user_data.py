"""A user's own routing data: prompts labelled with the adapter that should answer them.

Two shapes, so a gate can be trained for tasks the registry does not know:

- one jsonl file of ``{"prompt": ..., "adapter": NAME}`` rows;
- a directory with one ``NAME.jsonl`` per adapter whose rows have a ``prompt``
  (an adapter's own prompt/completion training file works as it is).

Rows are split into train and validation by a hash of the prompt, so the same
prompt never lands on both sides and the split does not depend on row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from ..errors import MixloraError
from ..tasks.sources import read_table

VALIDATION_PERCENT = 10


def is_routing_data(path: str | Path, names: Sequence[str]) -> bool:
    """True for a jsonl file whose first row names an adapter, or a directory holding a
    NAME.jsonl for every adapter; other paths are task data in the dataset's schema."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".jsonl" and "adapter" in next(iter(read_table(p)), {})
    return p.is_dir() and all((p / f"{n}.jsonl").is_file() for n in names)


def read_routing_rows(path: str | Path, names: Sequence[str]) -> tuple[list[str], list[int]]:
    """(prompts, adapter indices) from either shape; unknown adapter names are refused."""
    p = Path(path)
    index = {n: i for i, n in enumerate(names)}
    prompts: list[str] = []
    labels: list[int] = []
    if p.is_file():
        for where, row in _jsonl(p):
            name = row.get("adapter")
            if not isinstance(name, str) or name not in index:
                raise MixloraError(
                    f"{where}: adapter {name!r} is not one of the gate's adapters {list(names)}"
                )
            prompts.append(_prompt(row, where))
            labels.append(index[name])
    else:
        for name in names:
            for where, row in _jsonl(p / f"{name}.jsonl"):
                prompts.append(_prompt(row, where))
                labels.append(index[name])
    missing = [n for n, i in index.items() if i not in set(labels)]
    if missing:
        raise MixloraError(f"{p}: no prompts for adapter {missing[0]!r}")
    return prompts, labels


def split_rows(
    prompts: Sequence[str], labels: Sequence[int]
) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """(train, validation) by a stable hash of each prompt (`VALIDATION_PERCENT` held out)."""
    train: tuple[list[str], list[int]] = ([], [])
    val: tuple[list[str], list[int]] = ([], [])
    for text, label in zip(prompts, labels, strict=True):
        bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100
        side = val if bucket < VALIDATION_PERCENT else train
        side[0].append(text)
        side[1].append(label)
    return train, val


def _prompt(row: dict, where: str) -> str:
    text = row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise MixloraError(f"{where}: each row needs a non-empty 'prompt' string")
    return text


def _jsonl(path: Path):
    """(where, row) for each row of a jsonl file, with `read_table`'s one-line errors."""
    for i, row in enumerate(read_table(path), 1):
        yield f"{path} row {i}", row
