"""LoraHub: per-adapter weights found gradient-free on a few labelled examples.

As sail-sg/lorahub: weights wᵢ ∈ [-1.5, 1.5], start at 0, objective the
answers' cross-entropy plus α·Σ|wᵢ| (α = 0.05), a fixed budget of evaluations
of the merged forward. The optimiser is CMA-ES from the ``cma`` package (an
optional extra: ``pip install 'mlx-mixlora[learn]'``), seeded, so a run is
deterministic on a given machine. Each evaluation is one forward of the
calibration batch through `coefficients.weighted_adapters`; ΔW is never formed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..modules import n_layers
from .adamerging import Learned, answer_ids, finite
from .calibration import CalibExample, per_task_counts
from .coefficients import set_coefficients, table_for, weighted_adapters
from .methods import LORAHUB_BUDGET
from .objectives import build_batch, cross_entropy

BOUND = 1.5
L1 = 0.05
DEFAULT_BUDGET = LORAHUB_BUDGET
SIGMA0 = 0.5


def _cma():
    try:
        import cma
    except ImportError:
        raise MixloraError(
            "lorahub needs the 'cma' package: pip install 'mlx-mixlora[learn]' (or pip install cma)"
        ) from None
    return cma


def lorahub_weights(
    model,
    tokenizer,
    adapters: Sequence[Adapter],
    calib: Sequence[CalibExample],
    budget: int = DEFAULT_BUDGET,
    l1: float = L1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Learned:
    """Search one weight per adapter (see the module docstring); the model is left as it was."""
    if budget < 2:
        raise MixloraError(f"lorahub needs a budget of at least 2 evaluations, got {budget}")
    cma = _cma()
    t0 = time.perf_counter()
    table = table_for(adapters, "task", n_layers(model))
    n = len(adapters)
    losses: list[float] = []
    with weighted_adapters(model, adapters) as layers:
        batch = build_batch(
            tokenizer, calib, [answer_ids(tokenizer, c) for c in calib], labels_first=False
        )

        def objective(w) -> float:
            set_coefficients(layers, table, mx.array(np.asarray(w, dtype=np.float32)))
            loss = finite(float(cross_entropy(model, batch)), "loss")
            return loss + l1 * float(np.abs(w).sum())

        es = cma.CMAEvolutionStrategy(
            [0.0] * n,
            SIGMA0,
            {
                "bounds": [-BOUND, BOUND],
                "seed": seed + 1,  # cma reads 0 as "seed from the clock"
                "maxfevals": budget,
                "verbose": -9,
                "popsize": max(4, min(8, budget // 5)),
            },
        )
        best_w, best = np.zeros(n), objective(np.zeros(n))
        losses.append(best)
        evals = 1
        while not es.stop() and evals < budget:
            cands = es.ask()[: budget - evals]
            vals = [objective(np.asarray(c)) for c in cands]
            evals += len(cands)
            if len(cands) == es.popsize:
                es.tell(cands, vals)
            for c, v in zip(cands, vals, strict=True):
                if v < best:
                    best, best_w = v, np.asarray(c, dtype=np.float64)
            losses.append(best)
            if log is not None:
                log(f"{evals}/{budget} evaluations: best {best:.4f}")
    lam = mx.array(best_w.astype(np.float32))
    return Learned(table, lam, losses, time.perf_counter() - t0, per_task_counts(calib))
