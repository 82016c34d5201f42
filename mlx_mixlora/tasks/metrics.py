"""Task metrics: normalised exact match, accuracy, macro-F1 and ROUGE-L.

ROUGE-L is implemented here (LCS F-measure over lower-cased word tokens, β=1,
as rouge-score computes it without stemming) to keep the core free of extra
dependencies; tests check it against hand-computed values.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_TOKEN = re.compile(r"[a-z0-9]+")


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


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length, O(len(a)·len(b)) time, O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 between one prediction and one reference."""
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    if not p or not r:
        return 0.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    _same_length(predictions, references)
    if not references:
        return 0.0
    return sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / len(
        references
    )


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} references")
