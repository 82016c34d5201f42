"""How people ask: prompt styles built from a task's template and phrasings.

A task's `template` is one fixed wording; a router or adapter trained on it
alone learns to recognise that wording, not the task. Each built-in task also
lists train phrasings (instruction before or after the text, questions,
imperatives, terse and chatty, with and without the label list) and held-out
phrasings that no training code uses. Styles:

- ``template``: the bare template for every row (how results were measured before);
- ``varied``: the template for `TEMPLATE_SHARE` of the rows, a train phrasing for
  the rest (what adapters and gates train on); `TYPED_SHARE` of the phrased rows are
  also written the way people type (`typed`): lower case, no full stop at the end
  of a line, no punctuation at the end;
- ``heldout``: a held-out phrasing for every row (generalisation to new wordings).

The phrasing of each row is drawn from a seeded RNG, so a style, a seed and the
rows fix the prompts exactly.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ..errors import MixloraError
from .spec import Task

PROMPT_STYLES = ("template", "varied", "heldout")
TRAIN_STYLES = (
    "varied",
    "template",
)  # what training may use: held-out wordings are never trained on
# Share of `varied` prompts that keep the template: the template is still the most
# common way a prompt arrives from our own tools, so it stays well represented.
TEMPLATE_SHARE = 0.25
# Share of the phrased `varied` rows also written as people type. A request that ends
# without punctuation ends the way the base's plain documents do, and adapters trained
# on tidy prompts answered it with end-of-sequence.
TYPED_SHARE = 0.5
_LINE_END_STOP = re.compile(r"\.(?=[ \t]*(?:\n|$))")


def check_style(style: str, task: Task | None = None) -> str:
    """`style` if known (and, for ``heldout``, if `task` has held-out phrasings)."""
    if style not in PROMPT_STYLES:
        raise MixloraError(f"unknown prompt style {style!r}; use {', '.join(PROMPT_STYLES)}")
    if style == "heldout" and task is not None and not task.heldout_phrasings:
        raise MixloraError(
            f"task {task.name!r} has no held-out phrasings (add heldout_phrasings to its yaml)"
        )
    return style


def check_train_style(style: str) -> str:
    if style not in TRAIN_STYLES:
        raise MixloraError(
            f"training prompts must be one of {', '.join(TRAIN_STYLES)}, got {style!r} "
            "(held-out phrasings are for evaluation only)"
        )
    return style


def row_phrasings(task: Task, n: int, style: str, seed: int = 0) -> list[str | None]:
    """The phrasing of each of `n` rows (None: the template)."""
    check_style(style, task)
    if style == "template":
        return [None] * n
    rng = random.Random(f"phrasing:{task.name}:{style}:{seed}")
    if style == "heldout":
        return [rng.choice(task.heldout_phrasings) for _ in range(n)]
    if not task.phrasings:
        return [None] * n
    return [None if rng.random() < TEMPLATE_SHARE else rng.choice(task.phrasings) for _ in range(n)]


def typed(prompt: str, rng: random.Random) -> str:
    """`prompt` as someone might type it; each change drawn on its own, p = 1/2.

    Lower case; the full stop that ends a line dropped (inside a passage sentences
    keep theirs: without them a yes/no passage stopped being learnable in the
    recipe's steps); the final punctuation (".?:!") dropped.
    """
    if rng.random() < 0.5:
        prompt = prompt.lower()
    if rng.random() < 0.5:
        prompt = _LINE_END_STOP.sub("", prompt)
    if rng.random() < 0.5:
        prompt = prompt.rstrip().rstrip(".?:!").rstrip()
    return prompt


def phrased_examples(
    task: Task, rows: Sequence[dict], style: str = "template", seed: int = 0
) -> list[dict[str, str]]:
    """`{"prompt", "completion"}` pairs of `rows` with prompts in `style`."""
    phrasings = row_phrasings(task, len(rows), style, seed)
    rng = random.Random(f"typed:{task.name}:{seed}")
    out = []
    for row, p in zip(rows, phrasings, strict=True):
        example = task.example(row, p)
        if style == "varied" and p is not None and rng.random() < TYPED_SHARE:
            example["prompt"] = typed(example["prompt"], rng)
        out.append(example)
    return out
