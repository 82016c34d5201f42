"""Task metrics: normalised exact match, accuracy, macro-F1 and ROUGE-1/2/L.

ROUGE comes from Google's `rouge-score`, the package papers and the seeds report
with, with Porter stemming as is usual for CNN/DailyMail, so our summarization
numbers are comparable with theirs. Each is the F-measure of one prediction
against one reference, averaged over examples.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence


def normalize(text: str) -> str:
    """Lower-case, strip punctuation around words (keeps "sci/tech"), squeeze spaces."""
    words = (w.strip(string.punctuation) for w in text.lower().split())
    return " ".join(w for w in words if w)


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    _same_length(predictions, references)
    if not references:
        return 0.0
    return sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / len(
        references
    )


def macro_f1(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> float:
    """Mean per-class F1 over the reference label set (or `labels`).

    A prediction outside the label set counts as a miss for its true class; a
    class that is neither predicted nor present is skipped.
    """
    _same_length(predictions, references)
    preds = [normalize(p) for p in predictions]
    refs = [normalize(r) for r in references]
    classes = [normalize(c) for c in labels] if labels is not None else sorted(set(refs))
    scores = []
    for c in dict.fromkeys(classes):
        tp = sum(p == c and r == c for p, r in zip(preds, refs, strict=True))
        fp = sum(p == c and r != c for p, r in zip(preds, refs, strict=True))
        fn = sum(p != c and r == c for p, r in zip(preds, refs, strict=True))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


ROUGE_KEYS = {"rouge1": "rouge_1", "rouge2": "rouge_2", "rougeL": "rouge_l"}


@functools.cache
def _scorer(stem: bool):
    from rouge_score.rouge_scorer import RougeScorer  # ~0.75 s to import (nltk): on first use

    return RougeScorer(list(ROUGE_KEYS), use_stemmer=stem)


def rouge(prediction: str, reference: str, stem: bool = True) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of one prediction against one reference."""
    scores = _scorer(stem).score(reference, prediction)
    return {ours: float(scores[theirs].fmeasure) for theirs, ours in ROUGE_KEYS.items()}


def rouge_l(prediction: str, reference: str, stem: bool = True) -> float:
    return rouge(prediction, reference, stem)["rouge_l"]


def mean_rouge(
    predictions: Sequence[str], references: Sequence[str], stem: bool = True
) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures over examples (zeros for no examples)."""
    _same_length(predictions, references)
    total = dict.fromkeys(ROUGE_KEYS.values(), 0.0)
    for p, r in zip(predictions, references, strict=True):
        for k, v in rouge(p, r, stem).items():
            total[k] += v
    return {k: v / len(references) if references else 0.0 for k, v in total.items()}


def mean_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    return mean_rouge(predictions, references)["rouge_l"]


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} references")
