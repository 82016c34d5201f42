"""Merges whose coefficients are learned on calibration data, written as ordinary adapters.

`learn_merge` runs a ``learned`` method of `METHODS` — AdaMerging (`adamerging`)
or LoraHub (`lorahub`) — and writes the result with the exact linear merge at
the learned per-module weights (rank Σr, or `rank` by exact SVD), so it saves,
fuses and exports to PEFT like any merge. `search_merge` (`--search`) is the
validation search of a fixed method's options. Both record in the adapter's
config what they learned, from how many calibration prompts, and how long it took.

API::

    from mlx_mixlora.merge.learned import learn_merge
    from mlx_mixlora.merge.calibration import task_calibration
    calib = task_calibration(tasks, "synthetic", 16)       # validation split
    res = learn_merge(model, tok, adapters, "adamerging", calib, granularity="layer")
    res.save(out_dir)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..adapter_format import Adapter
from ..errors import MixloraError
from .adamerging import DEFAULT_LR, DEFAULT_STEPS, learn_coefficients
from .calibration import CalibExample
from .coefficients import merged_weights
from .engine import MergeResult, check_compatible, merge_adapters
from .lorahub import DEFAULT_BUDGET, lorahub_weights
from .masked import ties_masked
from .methods import get_method
from .search import search_merge

__all__ = ["learn_merge", "search_merge"]


def learn_merge(
    model,
    tokenizer,
    adapters: Sequence[Adapter],
    method: str,
    calib: Sequence[CalibExample],
    granularity: str = "layer",
    objective: str = "entropy",
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    budget: int = DEFAULT_BUDGET,
    seed: int = 0,
    rank: int | None = None,
    name: str | None = None,
    masks: str | None = None,
    density: float | None = None,
    log: Callable[[str], None] | None = None,
) -> MergeResult:
    """Learn the coefficients of `method` (adamerging | lorahub) on `calib`; a linear MergeResult.

    ``masks="ties"`` (AdaMerging++) learns over the adapters' TIES-masked deltas at
    `density` (default 0.2) instead of the adapters themselves (see `masked`).

    AdaMerging's `objective` is ``entropy`` (the paper's) or ``distill`` (KL from each
    prompt's own adapter; also unlabelled); LoraHub always fits the labelled answers.
    """
    m = get_method(method)
    if m.kind != "learned":
        raise MixloraError(f"{method} is not a learned merge; use merge_adapters")
    check_compatible(adapters)
    if not calib:
        raise MixloraError(f"{method} needs calibration prompts (--calib)")
    masked_info = {}
    if masks is not None:
        if masks != "ties":
            raise MixloraError(f"masks must be 'ties', got {masks!r}")
        density = 0.2 if density is None else density
        adapters, mask_error = ties_masked(adapters, density, seed=seed)
        masked_info = {"masks": masks, "density": density, "mask_rel_error": mask_error}
    if m.name == "adamerging":
        learned = learn_coefficients(
            model, tokenizer, adapters, calib, granularity, objective, steps, lr, log=log
        )
    else:
        learned = lorahub_weights(model, tokenizer, adapters, calib, budget, seed=seed, log=log)
    paths = sorted({p for a in adapters for p in a.module_paths()})
    res = merge_adapters(
        adapters,
        "linear",
        module_weights=merged_weights(learned.table, learned.lam, paths),
        rank=rank,
        name=name or m.name,
    )
    info = {"method": m.name, **learned.info(), **masked_info}
    if m.name == "adamerging":
        info["objective"] = objective
    res.method = m.name
    res.info.update(method=m.name, learned=info)
    res.config.extra["merge"].update(method=m.name, learned=info)
    return res
