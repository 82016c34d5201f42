"""Task scores under routing: route each prompt, then score each routed group fused.

Plugs into `mlx_mixlora.scoring.score_task`: prompts that got the same decision
are scored together with that decision fused into the base, and the groups'
means are combined by count (exact for accuracy and mean ROUGE-L; macro-F1
is not a mean, so it is left out of routed results).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..adapter_format import Adapter
from ..scoring import score_task
from .decision import decide
from .embed import encode_prompts
from .switch import fused_groups

# per-example means (macro-F1 is not one, so it is left out of routed rows)
_MEAN_KEYS = ("accuracy_gen", "accuracy_ll", "rouge_1", "rouge_2", "rouge_l", "score", "chance")


def score_routed(
    model: Any,
    tokenizer: Any,
    task: Any,
    examples: list[dict],
    router: Any,
    adapters: list[Adapter],
    label: int | None = None,
    mode: str = "top1",
    top_k: int = 2,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """`score_task`'s metrics for `task` with every prompt on its routed adapter(s).

    `label` (the index of the task's own adapter) adds the routing accuracy
    (except in mode ``all``, which routes nowhere) and lets the oracle router work.
    """
    toks = encode_prompts(tokenizer, [e["prompt"] for e in examples])
    labels: Sequence[int] | None = [label] * len(examples) if label is not None else None
    decisions = decide(
        router.probs(model, toks, labels=labels), mode, top_k=top_k, threshold=threshold
    )
    total: dict[str, float] = {}
    for members in fused_groups(model, adapters, decisions):
        res = score_task(model, tokenizer, task, [examples[i] for i in members])
        for k in _MEAN_KEYS:
            if k in res:
                total[k] = total.get(k, 0.0) + res[k] * len(members)
    out: dict[str, Any] = {k: v / len(examples) for k, v in total.items()}
    out["n"] = len(examples)
    chosen = [d.top1 for d in decisions]
    out["routed_to"] = {str(a): chosen.count(a) for a in sorted(set(chosen))}
    if label is not None and mode != "all":  # "all" mixes every adapter: nothing is routed
        out["routing_accuracy"] = float(np.mean(np.asarray(chosen) == label))
    return out
