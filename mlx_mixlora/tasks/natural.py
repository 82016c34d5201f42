"""The natural-request test set: built-in tasks asked the way people type.

`natural_requests.jsonl` (shipped with the package) holds hand-written requests
— a plain instruction plus the text, none in a template or a phrasing the code
knows — with their gold answers: ``{"task", "prompt", "answer"}`` per line. It is
evaluation data only: nothing that trains an adapter, a gate or a merge reads
it (a test checks that), so routing and answers measured on it are measured on
ground the training never saw.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MixloraError
from .sources import read_table
from .spec import Task

NATURAL_FILE = Path(__file__).with_name("natural_requests.jsonl")
_FIELDS = ("task", "prompt", "answer")


def read_natural(path: Path | None = None) -> list[dict]:
    """Every row of the natural set, checked for its three fields."""
    path = Path(path) if path is not None else NATURAL_FILE
    rows = read_table(path)
    for i, row in enumerate(rows, 1):
        if not all(isinstance(row.get(k), str) and row[k].strip() for k in _FIELDS):
            raise MixloraError(f"{path} row {i}: needs non-empty {', '.join(_FIELDS)}")
    return rows


def natural_examples(task: Task, path: Path | None = None) -> list[dict[str, str]]:
    """`{"prompt", "completion"}` pairs of `task`'s natural requests (empty if it has none)."""
    out = []
    for row in read_natural(path):
        if row["task"] != task.name:
            continue
        if task.is_label_task and row["answer"] not in task.label_names:
            raise MixloraError(
                f"natural request for {task.name!r} has answer {row['answer']!r}, "
                f"not one of {task.label_names}"
            )
        out.append({"prompt": row["prompt"], "completion": " " + row["answer"]})
    return out
