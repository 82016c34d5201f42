"""The nano base's unlabeled pretraining corpus, drawn from the synthetic train split.

It holds the texts only (snippets, passages, questions, articles, reviews),
never a label or a prompt template, so the pretrained base knows the language
of the tasks but not the tasks: it scores near chance until an adapter teaches it.
"""

from __future__ import annotations

from ..tasks import BUILTIN_TASKS
from ..tasks.sources import synthetic_rows
from ..tasks.synthetic import unlabeled_texts


def pretraining_docs(rows_per_task: int, seed: int) -> list[str]:
    """One document per synthetic train row, tasks interleaved deterministically."""
    per_task = [
        [" ".join(unlabeled_texts(r)) for r in synthetic_rows(t, "train", rows_per_task, seed)]
        for t in BUILTIN_TASKS
        if t.synthetic
    ]
    return [doc for group in zip(*per_task, strict=True) for doc in group]


def tokenizer_texts(docs: list[str]) -> list[str]:
    """Corpus plus the task templates and label words, so prompts tokenize compactly."""
    extra = []
    for t in BUILTIN_TASKS:
        extra.append(t.template.format(**{f: "" for f in t.fields}))
        extra.extend(" " + name for name in t.label_names)
    return docs + extra * 50
