"""`--search`: pick a fixed method's λ / density / drop on validation answers instead of defaults.

Fixed defaults are what make task arithmetic, TIES and DARE-TIES collapse on
strongly specialised adapters: the right scale depends on the adapters. Each
grid point is merged exactly as `merge_adapters` would, attached to the model,
and scored by the cross-entropy of the calibration answers (validation split,
never test); the lowest wins, earlier grid points winning ties. Seeded (DARE's
draws, the SVD sketch), so a search is deterministic on a given machine.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..lora import attach_lora, detach_lora
from .adamerging import answer_ids, finite
from .calibration import CalibExample, per_task_counts
from .engine import MergeResult, merge_adapters
from .objectives import build_batch, cross_entropy

SCALES = (0.25, 0.5, 0.75, 1.0)  # λ: every adapter's weight
GRIDS: dict[str, dict[str, tuple]] = {
    "task_arithmetic": {"lam": (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)},
    "ties": {"density": (0.1, 0.2, 0.5, 1.0), "scale": SCALES},
    "dare_ties": {"drop": (0.1, 0.3, 0.5, 0.7), "scale": SCALES},
}


def searchable() -> list[str]:
    return list(GRIDS)


def search_merge(
    model,
    tokenizer,
    adapters: Sequence[Adapter],
    method: str,
    calib: Sequence[CalibExample],
    seed: int = 0,
    rank: int | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> MergeResult:
    """The `method` merge at the grid point with the lowest validation loss (see module doc)."""
    if method not in GRIDS:
        raise MixloraError(f"--search covers {', '.join(GRIDS)}, not {method}")
    t0 = time.perf_counter()
    grid = GRIDS[method]
    batch = build_batch(
        tokenizer, calib, [answer_ids(tokenizer, c) for c in calib], labels_first=False
    )
    n = len(adapters)
    tried = []
    best: tuple[float, dict, MergeResult] | None = None
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        opts = {k: v for k, v in point.items() if k != "scale"}
        if "scale" in point:
            opts["weights"] = [point["scale"]] * n
        res = merge_adapters(adapters, method, seed=seed, rank=rank, name=name, **opts)
        attach_lora(model, res.config, res.weights)
        try:
            loss = finite(float(cross_entropy(model, batch)), "validation loss")
        finally:
            detach_lora(model)
        tried.append({**point, "loss": round(loss, 6)})
        if log is not None:
            log(f"{method} {point}: validation loss {loss:.4f}")
        if best is None or loss < best[0]:
            best = (loss, point, res)
    assert best is not None  # every grid is non-empty
    loss, point, res = best
    learned = {
        "search": {"grid": {k: list(v) for k, v in grid.items()}, "tried": tried},
        "chosen": point,
        "validation_loss": round(loss, 6),
        "calibration_examples": per_task_counts(calib),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    res.info["learned"] = learned
    res.config.extra["merge"]["learned"] = learned
    return res
