"""The nano base's pretraining corpus, drawn from the synthetic train split.

Most documents are plain texts (snippets, passages, questions, articles,
reviews). For the label tasks a share are the prompt (in the template or a
train phrasing) followed by a *random* label, drawn uniformly and independent of the content. The base so learns the
answer format and the label words (whose output embeddings a low-rank
LoRA cannot create from nothing) but not the mapping from content to label: it
scores at chance until an adapter teaches it the task. Summaries get no such
documents: a random headline after "Summary:" would teach the base not to copy. Another
share is a text written twice: only copying from context predicts the repeat,
the curriculum that grows induction heads, which summarising by extraction needs.
"""

from __future__ import annotations

import hashlib
import json
import random

from ..tasks import BUILTIN_TASKS, Task
from ..tasks import synthetic as S
from ..tasks.phrasing import TEMPLATE_SHARE
from ..tasks.sources import synthetic_rows
from ..tasks.synthetic import unlabeled_texts


def shuffled_answer_doc(task: Task, row: dict, rng: random.Random) -> str:
    """A label task's prompt with a uniformly drawn label: no information about the row.

    The prompt is in the template or one of the task's train phrasings (as in the
    `varied` prompt style), so the base has seen every trained wording end in a
    label; held-out phrasings never appear in the corpus.
    """
    phrasing = None
    if task.phrasings and rng.random() >= TEMPLATE_SHARE:
        phrasing = rng.choice(task.phrasings)
    return f"{task.prompt(row, phrasing)} {rng.choice(task.label_names)}"


def copy_words() -> list[str]:
    """Every word the generators use (names title-cased): the copy drill's alphabet."""
    words = {w for name in S.FIRST + S.LAST for w in [name.title()]}
    lists = [S.ACTIONS, S.THINGS, S.PLACES, S.OBJECTS, S.COLORS, S.ROLES, S.POSITIVE]
    lists += [S.NEGATIVE, S.ASPECTS, S.TIMES] + [list(v) for t in S.TOPICS.values() for v in t]
    for group in lists:
        for phrase in group:
            words.update(phrase.split())
    return sorted(words)


def pretraining_docs(
    rows_per_task: int,
    seed: int,
    format_share: float = 0.25,
    repeat_share: float = 0.2,
) -> list[str]:
    """One document per synthetic train row, tasks interleaved deterministically."""
    rng = random.Random(f"nano-corpus:{seed}")
    per_task = []
    for t in BUILTIN_TASKS:
        if not t.synthetic:
            continue
        rows = synthetic_rows(t, "train", rows_per_task, seed)
        docs = []
        for row in rows:
            u = rng.random()
            text = " ".join(unlabeled_texts(row))
            if u < format_share and t.is_label_task:
                docs.append(shuffled_answer_doc(t, row, rng))
            elif u < format_share + repeat_share:
                docs.append(f"{text} {text}")  # repeated text: teaches copying (induction)
            else:
                docs.append(text)
        per_task.append(docs)
    return [doc for group in zip(*per_task, strict=True) for doc in group]


def tokenizer_texts(docs: list[str]) -> list[str]:
    """Corpus plus the task templates, train phrasings and label words, so prompts tokenize compactly."""
    extra = []
    for t in BUILTIN_TASKS:
        for text in (t.template, *t.phrasings):
            extra.append(text.format(**{f: "" for f in t.fields}))
        extra.extend(" " + name for name in t.label_names)
    return docs + extra * 50


def corpus_fingerprint(
    rows_per_task: int, seed: int, format_share: float, repeat_share: float
) -> str:
    """sha256 (first 16 hex) of the tokenizer and pretraining text a base is built from."""
    docs = pretraining_docs(rows_per_task, seed, format_share, repeat_share)
    return hashlib.sha256(json.dumps(tokenizer_texts(docs)).encode()).hexdigest()[:16]
