"""The merge methods, one `Method` each in `METHODS`: what `mixlora merge`, the demo and the docs list.

A method is a kind plus, where the kind leaves a choice, one small function:

- ``exact`` — ΔW = Σ wᵢ·ΔWᵢ kept exactly as one rank-Σr factor pair (Bs side by
  side, wᵢsᵢ·Aᵢ stacked); `weights(w, options)` may change the per-layer weights.
  `rank` compresses it by an exact factored SVD.
- ``dense`` — the stacked ΔWᵢ of one module (a `kernels.Stack`: ``d [n, out, in]``
  from one batched matmul, weights ``w``) go through `combine(stack, options)`, an
  elementwise merge, usually `Stack.merge` with its trim / DARE / elect switches;
  a randomized SVD turns the result back into a low-rank adapter.
- ``learned`` — the coefficients are learned on calibration data through the
  model (`learned.learn_merge`; `merge_adapters` refuses them), then written as
  linear at the learned per-module weights.
- ``factor`` — PEFT's factor space: the Aᵢ and the Bᵢ each go through `combine`
  with weights √|wᵢsᵢ| (the sign on A), as PEFT's `add_weighted_adapter` does;
  not ΔW-exact, kept for PEFT's numbers: every dense method PEFT also has
  (``peft="<type>_svd"``) gets a ``factor_<name>`` twin.

`needs` names the options a method cannot run without, `reads` the ones it alone
reads (recorded in the merged adapter's config); `demo` gives the options the demo
merges with (weights: absent = 1 each, "mean" = 1/n each, None = not given).
This module imports no MLX (a method that needs `mx` imports it inside its
function), so `mixlora --help` lists the methods without loading MLX.

Adding a method: its function (if its kind needs one) and one `Method` row in
`_TABLE` here, plus a test against a NumPy reference in tests/test_merge_methods.py.
The CLI's --method choices and help table, and the demo (with `demo=`), follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import MixloraError

if TYPE_CHECKING:
    from ..adapter_format import Adapter
    from .kernels import Stack
    from .options import MergeOptions


# Learned merges' defaults, here (no MLX) so the CLI can show them without loading MLX.
GRANULARITIES = ("task", "layer", "module")  # λ per adapter, × layer, × layer × module
LEARN_STEPS = 60  # AdaMerging: full-batch Adam steps
LEARN_LR = 0.05
LORAHUB_BUDGET = 40  # LoraHub: evaluations (the paper's 40)
CALIB_EXAMPLES = 16  # validation prompts per task


def weighted_sum(s: Stack, o: MergeOptions) -> Any:
    return s.merge(o)


def ties(s: Stack, o: MergeOptions) -> Any:
    """Trim (without a density: none, mergekit's default 1.0), elect, disjoint mean."""
    return s.merge(o, trim=o.density is not None, elect=True)


def dare_linear(s: Stack, o: MergeOptions) -> Any:
    return s.merge(o, dare=True)


def dare_ties(s: Stack, o: MergeOptions) -> Any:
    """DARE then TIES; with a density also TIES' trim (without one, PEFT's dare_ties)."""
    return s.merge(o, trim=o.density is not None, dare=True, elect=True)


def magnitude_prune(s: Stack, o: MergeOptions) -> Any:
    return s.merge(o, trim=True)


def times_lam(w: list[float], o: MergeOptions) -> list[float]:
    return [o.lam * x for x in w]


def largest_rank(adapters: Sequence[Adapter]) -> int:
    return max(a.config.rank_of(p) for a in adapters for p in a.module_paths())


Combine = Callable[["Stack", "MergeOptions"], Any]

_NEEDS = {  # option -> (given?, what the error asks for)
    "density": (lambda o: o.density is not None, "a density (fraction of entries kept, e.g. 0.2)"),
    "drop": (lambda o: o.drop is not None, "a drop probability p (e.g. 0.5)"),
    "layers": (
        lambda o: o.layer_ranges is not None or o.layer_weights is not None,
        "layer ranges (e.g. cls:0-7,qa:8-14) or per-layer weights",
    ),
}


@dataclass(frozen=True)
class Method:
    """One merge method; see the module docstring for what each field means per kind."""

    name: str
    kind: str  # "exact" | "dense" | "factor" | "learned"
    math: str  # one line for `mixlora merge --help`
    combine: Combine | None = None  # dense / factor: the elementwise merge of a Stack
    weights: Callable[[list[float], MergeOptions], list[float]] | None = None  # exact
    rank: Callable[[Sequence[Adapter]], int] | None = None  # default rank (else: none / Σr)
    needs: tuple[str, ...] = ()  # of _NEEDS
    reads: tuple[str, ...] = ()  # options only this method reads: "lam", "majority_sign"
    peft: str = "—"  # PEFT's combination_type computing the same
    demo: dict | None = None  # options the demo merges with; None: not in the demo

    def check(self, o: MergeOptions, adapters: Sequence[Adapter]) -> None:
        """Refuse options this method cannot run with (before any work)."""
        for need in self.needs:
            given, what = _NEEDS[need]
            if not given(o):
                raise MixloraError(f"{self.name} needs {what}")
        if self.kind == "factor":
            if len({a.config.rank_of(p) for a in adapters for p in a.module_paths()}) > 1:
                raise MixloraError(
                    f"{self.name} (PEFT's factor space) needs adapters of one rank; "
                    "use cat/svd or ties"
                )


LINEAR = Method(
    "linear",
    "exact",
    "ΔW = Σ wᵢ·ΔWᵢ, exact at rank Σr (concatenation)",
    peft="cat",
    demo={"weights": "mean"},
)
_TABLE = (
    LINEAR,
    Method("cat", "exact", "linear under PEFT's name", peft="cat"),
    Method("task_arithmetic", "exact", "ΔW = λ·Σ wᵢ·ΔWᵢ", weights=times_lam, reads=("lam",),
           demo={}),
    Method("layer_wise", "exact", "each layer range takes one adapter (one-hot wᵢ)",
           needs=("layers",), demo={"layer_ranges": "even", "weights": None}),
    Method("svd", "exact", "linear, then its best rank-r (exact factored SVD; "
           "r: --rank, else the largest adapter rank)", rank=largest_rank, peft="svd"),
    Method("ties", "dense", "trim each ΔWᵢ to its top density·numel |values| (default 1: no "
           "trim, as mergekit), elect the sign by total mass, disjoint weighted mean", combine=ties,
           reads=("majority_sign",), peft="ties_svd", demo={"density": 0.2}),
    Method("dare_linear", "dense", "drop entries with prob p, rescale 1/(1-p), Σ wᵢ",
           combine=dare_linear, needs=("drop",), peft="dare_linear_svd"),
    Method("dare_ties", "dense", "DARE, then elect + disjoint mean (+ TIES' trim with a density)",
           combine=dare_ties, needs=("drop",), reads=("majority_sign",), peft="dare_ties_svd",
           demo={"drop": 0.5}),
    Method("magnitude_prune", "dense", "trim each ΔWᵢ, then Σ wᵢ", combine=magnitude_prune,
           needs=("density",), peft="magnitude_prune_svd"),
    Method("adamerging", "learned", "λ per adapter (× layer × module: --granularity) minimising "
           "prediction entropy on unlabelled --calib prompts (AdaMerging; --masks ties: over TIES-masked "
           "deltas, AdaMerging++), written as linear",
           demo={"granularity": "layer"}),
    Method("lorahub", "learned", "one weight per adapter by CMA-ES on a few labelled --calib "
           "examples, loss + 0.05·Σ|wᵢ| (LoraHub), written as linear", demo={}),
)  # fmt: skip
_FACTOR_TWINS = (
    Method("factor_linear", "factor", "PEFT's factor-space linear", weighted_sum, peft="linear"),
    *(replace(m, name=f"factor_{m.name}", kind="factor", math=f"PEFT's factor-space {m.name}",
              peft=m.peft.removesuffix("_svd"), demo=None)
      for m in _TABLE if m.kind == "dense" and m.peft.endswith("_svd")),
)  # fmt: skip
# name -> method; "weighted" is linear under another name (the result records "linear")
METHODS: dict[str, Method] = {
    "linear": LINEAR,
    "weighted": LINEAR,
    **{m.name: m for m in (*_TABLE, *_FACTOR_TWINS)},
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MixloraError(f"unknown merge method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def describe_methods() -> str:
    """The table as text, one method a line (`mixlora merge --help` prints it)."""
    width = max(map(len, METHODS))
    return "\n".join(
        f"{name:<{width}}  {m.kind:<7}  "
        + (f"= {m.name}" if name != m.name else m.math)
        + (f" (PEFT: {m.peft})" if m.peft != "—" and name == m.name else "")
        for name, m in METHODS.items()
    )
