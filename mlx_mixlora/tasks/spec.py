"""What a task is: input fields, a prompt template, a target and a metric.

A task turns a raw row in its dataset's own schema (e.g. AG News' ``text``,
``label``) into a ``{"prompt", "completion"}`` training example, so every
source (hub, local file, synthetic generator) feeds the same code.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

from ..errors import MixloraError

METRICS = ("accuracy", "rouge_l")


def label_key(value: Any) -> str:
    """Canonical key for a raw label: 1, 1.0 and "1" agree; True and "true" agree."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text.lower() if text.lower() in ("true", "false") else text


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset: `datasets.load_dataset(path, name, split=splits[split])`."""

    path: str
    name: str | None = None
    splits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One skill. Label tasks have `labels` (raw value -> label text); text tasks do not."""

    name: str
    fields: tuple[str, ...]
    template: str
    target: str
    metric: str = "accuracy"
    labels: dict[str, str] | None = None
    hub: HubSource | None = None
    synthetic: str | None = None
    max_new_tokens: int = 8
    description: str = ""
    # Other ways people ask for the task (same fields as `template`): `phrasings` train
    # adapters and gates; `heldout_phrasings` only measure how they generalise.
    phrasings: tuple[str, ...] = ()
    heldout_phrasings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise MixloraError(
                f"task {self.name!r}: unknown metric {self.metric!r}; known: {', '.join(METRICS)}"
            )
        if self.metric == "accuracy" and not self.labels:
            raise MixloraError(f"task {self.name!r}: metric accuracy needs a label map")
        self._check_prompt_text(self.template, "template")
        for text in (*self.phrasings, *self.heldout_phrasings):
            self._check_prompt_text(text, f"phrasing {text!r}", every_field=True)
        if set(self.heldout_phrasings) & {self.template, *self.phrasings}:
            raise MixloraError(
                f"task {self.name!r}: a held-out phrasing is also the template or a train phrasing"
            )

    def _check_prompt_text(self, text: str, what: str, every_field: bool = False) -> None:
        """Only the task's fields; a phrasing must show every input (it replaces the template)."""
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            text.format(**{f: "" for f in self.fields})
        except (KeyError, IndexError, ValueError) as e:
            raise MixloraError(
                f"task {self.name!r}: {what} uses a field that is not in fields "
                f"{list(self.fields)}: {e}"
            ) from None
        if every_field and used != set(self.fields):
            raise MixloraError(
                f"task {self.name!r}: {what} must use every field of "
                f"{list(self.fields)} (uses {sorted(used)})"
            )

    @property
    def is_label_task(self) -> bool:
        return self.labels is not None

    @property
    def label_names(self) -> list[str]:
        """Allowed label texts in a stable order (duplicates removed)."""
        return list(dict.fromkeys((self.labels or {}).values()))

    def check_row(self, row: dict, where: str) -> None:
        missing = [f for f in (*self.fields, self.target) if f not in row]
        if missing:
            raise MixloraError(
                f"{where}: rows lack field(s) {missing} that task {self.name!r} needs "
                f"(has {sorted(row)})"
            )

    def prompt(self, row: dict, phrasing: str | None = None) -> str:
        """The row's prompt in `phrasing` (one of the task's), else in the template."""
        text = self.template if phrasing is None else phrasing
        return text.format(**{f: _clean(row[f]) for f in self.fields})

    def target_text(self, row: dict) -> str:
        value = row[self.target]
        if self.labels is None:
            return _clean(value)
        key = label_key(value)
        if key not in self.labels:
            raise MixloraError(
                f"task {self.name!r}: label {value!r} is not in its label map {sorted(self.labels)}"
            )
        return self.labels[key]

    def example(self, row: dict, phrasing: str | None = None) -> dict[str, str]:
        """The training/eval pair; the completion starts with a space after the prompt."""
        return {"prompt": self.prompt(row, phrasing), "completion": " " + self.target_text(row)}


def _clean(value: Any) -> str:
    return " ".join(str(value).split())
