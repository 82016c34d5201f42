"""Does a base copy from its context? Two next-token probes, no adapter training.

Extractive summaries ("First Last action thing." from the article's lead) need a
base that copies tokens it has seen in the prompt (induction / copy heads): a
LoRA on the attention projections can redirect attention, but it does not
create a copying circuit in the budget. These probes measure that ability
directly, in seconds, so a base recipe can be judged before any adapter run:
- `remention`: after an article's lead sentence, is the next token the
  subject's last name (the second sentence always opens with it)? Chance 1/20.
- `repeat`: on a random span of the generators' words written twice, the
  share of the second copy's tokens predicted exactly. Chance ~1/len(words).
"""

from __future__ import annotations

import random

import mlx.core as mx
import numpy as np

from ..tasks import synthetic as S
from .corpus import copy_words


def _argmax_next(model, ids: list[int]) -> np.ndarray:
    """Greedy next-token prediction at every position of one sequence."""
    return np.array(mx.argmax(model(mx.array([ids]))[0], axis=-1))


def copy_probe(model, tokenizer, n: int = 100, seed: int = 0) -> dict[str, float]:
    """`{"remention", "repeat", "remention_chance", "repeat_chance"}` accuracies in [0, 1]."""
    rng = random.Random(f"copy-probe:{seed}")
    words = copy_words()
    hits, shares = [], []
    for _ in range(n):
        row = S.cnn_dailymail(rng)
        lead = row["article"].split(". ", 1)[0] + "."
        last = row["highlights"].split()[1]
        target = tokenizer.encode(" " + last, add_special_tokens=False)[0]
        hits.append(int(_argmax_next(model, tokenizer.encode(lead))[-1]) == target)

        span = " ".join(rng.choice(words) for _ in range(10))
        first = tokenizer.encode(span + ".")
        ids = tokenizer.encode(f"{span}. {span}.")
        pred, gold = _argmax_next(model, ids)[:-1], np.array(ids[1:])
        start = len(first)  # the prediction of the second copy's second token onwards
        shares.append(float((pred[start:] == gold[start:]).mean()))
    return {
        "remention": float(np.mean(hits)),
        "repeat": float(np.mean(shares)),
        "remention_chance": 1 / len(S.LAST),
        "repeat_chance": 1 / len(words),
    }
