"""What a merge can be told besides its adapters and method: `merge_adapters(**options)`.

`mixlora merge` flags have the same names, so the CLI passes them through as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MixloraError

MaskFn = Callable[[str, int, tuple[int, ...]], Any]  # -> a bool mx.array (True = keep)


@dataclass(frozen=True)
class MergeOptions:
    """Options of one merge; each method reads the ones it needs (`Method.needs`/`reads`)."""

    weights: Sequence[float] | str | None = None  # one per adapter ("0.5,0.3" or a list); 1 each
    lam: float = 1.0  # task_arithmetic's λ
    # trim: fraction of entries kept per weight. None: ties / dare_ties do not trim, which is
    # mergekit's default (density 1.0); PEFT has no default. magnitude_prune needs one.
    density: float | None = None
    drop: float | None = None  # DARE: drop probability p (PEFT's density is 1 - p)
    rank: int | None = None  # compress the result to this rank
    seed: int = 0  # DARE's draws and the randomized SVD's sketch
    layer_ranges: str | dict[int, int] | None = None  # "cls:0-7,qa:8-14" or "even"
    layer_weights: str | dict[int, Sequence[float]] | None = None  # "0-7=1,0;8-21=0.2,0.8"
    # {module path: weight vector}: per-module weights (learned merges write these); a module
    # not listed takes its layer's vector
    module_weights: dict[str, Sequence[float]] | None = None
    majority_sign: str = "total"  # TIES sign election: "total" (PEFT's) or "frequency"
    output: str = "adapter"  # or "deltas": dense ΔW per module
    oversample: int = 16  # randomized SVD
    power_iters: int = 2  # randomized SVD (from the adapters' row spaces: svd.py)
    kernel: str = "compiled"  # TIES elect/merge: compiled MLX, or "metal" (opt-in, see kernels)
    select: str = "auto"  # top-k selection: "numpy" on the CPU, "mlx" elsewhere
    name: str | None = None  # recorded in the merged adapter's config
    mask_fn: MaskFn | None = None  # DARE keep-masks (key, adapter index, shape): parity tests

    def check(self) -> None:
        """Refuse values no method accepts (what a method requires is `Method.check`)."""
        if self.output not in ("adapter", "deltas"):
            raise MixloraError(f"output must be 'adapter' or 'deltas', got {self.output!r}")
        if self.density is not None and not 0.0 <= self.density <= 1.0:
            raise MixloraError(f"density must be in [0, 1], got {self.density}")
        if self.drop is not None and not 0.0 <= self.drop < 1.0:
            raise MixloraError(f"drop probability must be in [0, 1), got {self.drop}")
        if self.majority_sign not in ("total", "frequency"):
            raise MixloraError(
                f"majority sign method must be total or frequency, got {self.majority_sign!r}"
            )
        if self.rank is not None and self.rank < 1:
            raise MixloraError(f"rank must be >= 1, got {self.rank}")
        if self.oversample < 0 or self.power_iters < 0:
            raise MixloraError("oversample and power iterations must be >= 0")
        if self.module_weights is not None:
            for path, ws in self.module_weights.items():
                if not all(math.isfinite(float(w)) for w in ws):
                    raise MixloraError(f"module weights of {path} are not all finite: {list(ws)}")
        if self.layer_ranges is not None and self.layer_weights is not None:
            raise MixloraError("give layer ranges or per-layer weights, not both")
