"""Calibration prompts for learned merges: from a task's validation split or the user's jsonl.

Never from the test split: scores reported on the test split would otherwise be
fitted to it. AdaMerging reads only the prompts (and the label set of label
tasks); LoraHub and the `--search` of fixed methods also read the answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MixloraError
from ..tasks import Task, load_examples, resolve_task

CALIB_SPLIT = "validation"


@dataclass(frozen=True)
class CalibExample:
    """One calibration prompt: its task (an adapter's task), allowed labels, and reference answer."""

    task: str
    prompt: str
    labels: tuple[str, ...] | None = None  # label tasks: the allowed answers
    answer: str | None = None  # the reference completion (read by LoraHub / --search only)


def task_calibration(
    tasks: Sequence[Task], data: str, n_per_task: int, seed: int = 0, prompts: str = "template"
) -> list[CalibExample]:
    """`n_per_task` validation examples of each task (`data`: synthetic, hub or a directory)."""
    if n_per_task < 1:
        raise MixloraError(f"calibration examples per task must be >= 1, got {n_per_task}")
    examples = {
        t.name: load_examples(t, data, CALIB_SPLIT, n=n_per_task, seed=seed, prompts=prompts)
        for t in tasks
    }
    return calibration_rows(tasks, examples)


def calibration_rows(tasks: Sequence[Task], examples: dict[str, list[dict]]) -> list[CalibExample]:
    """Each task's examples ({task name: [{"prompt", "completion"}, ...]}) as calibration rows."""
    out = []
    for t in tasks:
        labels = tuple(t.label_names) if t.is_label_task else None
        out += [
            CalibExample(t.name, ex["prompt"], labels, ex["completion"]) for ex in examples[t.name]
        ]
    return out


def read_calibration(path: str | Path, known_tasks: Sequence[str]) -> list[CalibExample]:
    """Rows ``{"prompt", "task"?, "labels"?, "completion"?}`` of a jsonl file.

    `task` names one of the adapters' tasks (`known_tasks`) or a registered task;
    a registered label task supplies `labels` when the row has none.
    """
    path = Path(path)
    if not path.is_file():
        raise MixloraError(f"calibration file {path} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MixloraError(f"{path} line {i}: not JSON ({e.msg})") from None
            out.append(_row(row, known_tasks, f"{path} line {i}"))
    if not out:
        raise MixloraError(f"calibration file {path} has no rows")
    return out


def _row(row: object, known: Sequence[str], where: str) -> CalibExample:
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
        raise MixloraError(f"{where}: needs a non-empty string 'prompt'")
    task = row.get("task")
    if not isinstance(task, str) or not task:
        raise MixloraError(f"{where}: needs 'task', one of {', '.join(known)}")
    labels = row.get("labels")
    if labels is None and task not in known:
        raise MixloraError(f"{where}: task {task!r} is none of the adapters' ({', '.join(known)})")
    if labels is None:
        try:
            t = resolve_task(task)
            labels = t.label_names if t.is_label_task else None
        except MixloraError:
            labels = None
    if labels is not None and (
        not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels)
    ):
        raise MixloraError(f"{where}: 'labels' must be a non-empty list of strings")
    answer = row.get("completion")
    if answer is not None and not isinstance(answer, str):
        raise MixloraError(f"{where}: 'completion' must be a string")
    return CalibExample(task, row["prompt"], tuple(labels) if labels else None, answer)


def per_task_counts(calib: Sequence[CalibExample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in calib:
        counts[c.task] = counts.get(c.task, 0) + 1
    return counts
