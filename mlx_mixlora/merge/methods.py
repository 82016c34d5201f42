"""Merge methods on `(AdapterConfig, weights)` pairs, streamed one target weight at a time.

Three families (see the package docstring for the math):

- exact product space — linear/weighted, cat, task_arithmetic, layer_wise, svd:
  ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ kept as one rank-Σr factor pair (Bs concatenated, scaled
  As concatenated); `rank` compresses it by an exact factored SVD.
- dense product space — ties, dare_linear, dare_ties, magnitude_prune: the
  stacked ΔWᵢ from one batched matmul, one compiled elementwise kernel, then a
  randomized SVD back to a low-rank adapter (or the dense deltas themselves).
- PEFT's factor space — factor_linear, factor_ties, factor_dare_linear,
  factor_dare_ties, factor_magnitude_prune: As and Bs merged separately with
  weights √|wᵢsᵢ| as PEFT's `linear`/`ties`/... do; not ΔW-exact, kept for parity.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..adapter_format import (
    TARGET_PARENT,
    AdapterConfig,
    check_weights,
    parse_module_path,
)
from ..errors import MixloraError
from ..identity import describe, identity_mismatch
from . import kernels
from .layers import parse_layer_ranges, parse_layer_weights, parse_weights
from .svd import factored_svd, randomized_svd

EXACT = ("linear", "weighted", "cat", "task_arithmetic", "layer_wise", "svd")
# dense method -> (trim by magnitude, DARE drop, sign election)
DENSE = {
    "ties": (True, False, True),
    "dare_linear": (False, True, False),
    "dare_ties": (False, True, True),
    "magnitude_prune": (True, False, False),
}
FACTOR = {f"factor_{m}": spec for m, spec in (("linear", (False, False, False)), *DENSE.items())}
METHODS = (*EXACT, *DENSE, *FACTOR)
_IDENTITY_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "num_key_value_heads")

MaskFn = Callable[[str, int, tuple[int, ...]], mx.array]


@dataclass
class MergeResult:
    """A merged adapter: low-rank (`config` + `weights`, scale 1) or dense `deltas` {path: ΔW}."""

    method: str
    config: AdapterConfig | None = None
    weights: dict[str, mx.array] | None = None
    deltas: dict[str, mx.array] | None = None
    errors: dict[str, float] = field(default_factory=dict)
    rel_error: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def low_rank(self) -> bool:
        return self.weights is not None

    def module_paths(self) -> list[str]:
        if self.deltas is not None:
            return list(self.deltas)
        return sorted({k.rsplit(".", 1)[0] for k in self.weights})

    def factors(self) -> dict[str, tuple[mx.array, mx.array]]:
        """{path: (B, A)} with ΔW = B·A (low-rank results only)."""
        if self.weights is None:
            raise MixloraError(f"the {self.method} result holds dense deltas, not factors")
        return {
            p: (self.weights[f"{p}.lora_b"], self.weights[f"{p}.lora_a"])
            for p in self.module_paths()
        }

    def delta(self, path: str) -> mx.array:
        """Dense ΔW of one module."""
        if self.deltas is not None:
            return self.deltas[path]
        b, a = self.factors()[path]
        return b @ a

    def save(self, out_dir, overwrite: bool = False):
        """Write the low-rank result as an adapter directory (atomically)."""
        from ..adapter_format import save_adapter

        if not self.low_rank:
            raise MixloraError(
                f"the {self.method} result holds dense deltas; pass a rank to save it"
            )
        return save_adapter(out_dir, self.config, self.weights, overwrite=overwrite)

    def updates(self) -> dict[str, Any]:
        """What `fuse_deltas` takes: factor pairs when low-rank, dense ΔW otherwise."""
        return self.factors() if self.low_rank else dict(self.deltas)


def _stable_seed(seed: int, *parts: object) -> int:
    """A seed per (merge seed, module, adapter): masks do not depend on module order."""
    return zlib.crc32(":".join(str(p) for p in (seed, *parts)).encode())


def check_compatible(adapters: Sequence[tuple[AdapterConfig, dict]]) -> None:
    """Same base (shapes + identity, see `identity.identity_mismatch`), well-formed weights, equal shapes per shared module."""
    if not adapters:
        raise MixloraError("nothing to merge: give at least one adapter")
    first = adapters[0][0].base_model
    for idx, (cfg, w) in enumerate(adapters):
        if not isinstance(cfg, AdapterConfig):
            raise MixloraError(f"adapter {idx} is not an (AdapterConfig, weights) pair")
        check_weights(cfg, {k: tuple(v.shape) for k, v in w.items()}, source=f"adapter {idx}")
        mine = cfg.base_model
        for key in _IDENTITY_KEYS:
            if mine.get(key) is not None and first.get(key) is not None and mine[key] != first[key]:
                raise MixloraError(
                    f"adapter {idx} ({cfg.name or 'unnamed'}) was made for a different base "
                    f"({key} {mine[key]} vs {first[key]}); adapters for different bases cannot be merged"
                )
        if identity_mismatch(mine, first):
            raise MixloraError(
                f"adapter {idx} ({cfg.name or 'unnamed'}) was made for a different base "
                f"({describe(mine)} vs adapter 0's {describe(first)}); adapters for different "
                "bases cannot be merged"
            )
    shapes: dict[str, tuple[int, int, int]] = {}
    for idx, (cfg, w) in enumerate(adapters):
        for p in cfg.module_paths():
            out_in = (w[f"{p}.lora_b"].shape[0], w[f"{p}.lora_a"].shape[1])
            if p in shapes and shapes[p][:2] != out_in:
                raise MixloraError(
                    f"{p}: adapter {idx} has shape {list(out_in)} but adapter {shapes[p][2]} has "
                    f"{list(shapes[p][:2])}; adapters for different bases cannot be merged"
                )
            shapes.setdefault(p, (*out_in, idx))


def _layer_weights(
    configs: list[AdapterConfig], method: str, weights, lam, layer_ranges, layer_weights, n_layers
) -> Callable[[int], list[float]]:
    n = len(configs)
    base = parse_weights(weights, n) if weights is not None else [1.0] * n
    if method == "task_arithmetic":
        base = [lam * w for w in base]
    if layer_ranges is not None and layer_weights is not None:
        raise MixloraError("give layer ranges or per-layer weights, not both")
    if method == "layer_wise" and layer_ranges is None and layer_weights is None:
        raise MixloraError(
            "layer_wise needs layer ranges (e.g. cls:0-7,qa:8-14) or per-layer weights"
        )
    if layer_ranges is not None:
        if isinstance(layer_ranges, str):
            names = [(c.name, c.task) for c in configs]
            owner = parse_layer_ranges(layer_ranges, names, n_layers)
        else:
            owner = {int(k): int(v) for k, v in dict(layer_ranges).items()}
        return lambda layer: [base[i] if owner.get(layer) == i else 0.0 for i in range(n)]
    if layer_weights is not None:
        if isinstance(layer_weights, str):
            per = parse_layer_weights(layer_weights, n, n_layers)
        else:
            per = {int(k): parse_weights(v, n) for k, v in dict(layer_weights).items()}
        return lambda layer: per.get(layer, base)
    return lambda layer: base


def _module_order(configs: list[AdapterConfig]) -> list[str]:
    order = {t: i for i, t in enumerate(TARGET_PARENT)}
    paths = {p for c in configs for p in c.module_paths()}
    return sorted(paths, key=lambda p: (parse_module_path(p)[0], order[parse_module_path(p)[1]]))


def merge_adapters(
    adapters: Sequence[tuple[AdapterConfig, dict]],
    method: str,
    *,
    weights: Sequence[float] | str | None = None,
    lam: float = 1.0,
    density: float | None = None,
    drop: float | None = None,
    rank: int | None = None,
    seed: int = 0,
    layer_ranges: str | dict[int, int] | None = None,
    layer_weights: str | dict[int, Sequence[float]] | None = None,
    majority_sign: str = "total",
    output: str = "adapter",
    oversample: int = 16,
    power_iters: int = 3,
    kernel: str = "auto",
    select: str = "auto",
    name: str | None = None,
    mask_fn: MaskFn | None = None,
) -> MergeResult:
    """Merge adapters with `method` (one of `METHODS`); see the package docstring.

    `output="adapter"` returns low-rank factors (exact methods: exact at rank Σr
    unless `rank`; dense methods: randomized SVD to `rank`, default Σr);
    `output="deltas"` returns dense ΔW per module. `mask_fn(key, i, shape)`
    overrides DARE's seeded keep-masks (for parity tests against PEFT).
    """
    method = {"weighted": "linear"}.get(method, method)
    if method not in METHODS:
        raise MixloraError(f"unknown merge method {method!r}; choose from {', '.join(METHODS)}")
    if output not in ("adapter", "deltas"):
        raise MixloraError(f"output must be 'adapter' or 'deltas', got {output!r}")
    check_compatible(adapters)
    configs = [c for c, _ in adapters]
    trim, dare, elect = DENSE.get(method) or FACTOR.get(method) or (False, False, False)
    if method in ("dare_ties", "factor_dare_ties") and density is not None:
        trim = True  # DARE then TIES' trim; without --density this is PEFT's dare_ties
    if trim and density is None:
        raise MixloraError(f"{method} needs a density (fraction of entries kept, e.g. 0.2)")
    if density is not None and not 0.0 <= density <= 1.0:
        raise MixloraError(f"density must be in [0, 1], got {density}")
    if dare and drop is None:
        raise MixloraError(f"{method} needs a drop probability p (e.g. 0.5)")
    if drop is not None and not 0.0 <= drop < 1.0:
        raise MixloraError(f"drop probability must be in [0, 1), got {drop}")
    if majority_sign not in ("total", "frequency"):
        raise MixloraError(
            f"majority sign method must be total or frequency, got {majority_sign!r}"
        )
    if rank is not None and rank < 1:
        raise MixloraError(f"rank must be >= 1, got {rank}")
    if oversample < 0 or power_iters < 0:
        raise MixloraError("oversample and power iterations must be >= 0")
    if method in FACTOR and len({c.rank_of(p) for c in configs for p in c.module_paths()}) > 1:
        raise MixloraError(
            f"{method} (PEFT's factor space) needs adapters of one rank; use cat/svd or ties"
        )
    if method == "svd" and rank is None:
        rank = max(c.rank_of(p) for c in configs for p in c.module_paths())
    n_layers = configs[0].base_model.get("num_hidden_layers") or 1 + max(
        max(c.layers) for c in configs
    )
    wfun = _layer_weights(configs, method, weights, lam, layer_ranges, layer_weights, n_layers)
    paths_of = [set(c.module_paths()) for c in configs]
    total_rank = sum(c.rank for c in configs)

    out_w: dict[str, mx.array] = {}
    out_d: dict[str, mx.array] = {}
    errors: dict[str, float] = {}
    err_num = err_den = 0.0
    for path in _module_order(configs):
        layer, _ = parse_module_path(path)
        wv = wfun(layer)
        present = [i for i in range(len(adapters)) if path in paths_of[i] and wv[i] != 0.0]
        if not present:
            continue
        a_list = [adapters[i][1][f"{path}.lora_a"].astype(mx.float32) for i in present]
        b_list = [adapters[i][1][f"{path}.lora_b"].astype(mx.float32) for i in present]
        scales = [configs[i].scale_of(path) for i in present]
        ws = [wv[i] for i in present]

        def draws(key: str, shape: tuple[int, ...], _present=present) -> mx.array:
            """DARE's U[0,1) per adapter; a user `mask_fn` maps keep -> 0, drop -> 1."""
            us = []
            for i in _present:
                if mask_fn is not None:
                    us.append(mx.where(mask_fn(key, i, shape[1:]).astype(mx.bool_), 0.0, 1.0))
                else:
                    us.append(kernels.dare_uniform(shape[1:], _stable_seed(seed, key, i)))
            return mx.stack(us)

        def reduce(stack: mx.array, wvec: list[float], key: str) -> mx.array:
            uni, scale, thr = None, 1.0, None
            if dare:
                uni, scale = draws(key, stack.shape), 1.0 / (1.0 - drop)
            if trim:
                src = stack if uni is None else mx.where(uni < 1.0 - drop, stack, 0.0)
                thr, excess = kernels.trim_thresholds(src, density, select)
                stack = kernels.zero_entries(stack, excess)  # ties beyond the quota
            return kernels.merge_slices(
                stack,
                wvec,
                majority_sign if elect else None,
                thr,
                None,
                scale,
                kernel,
                uniform=uni,
                keep_below=1.0 - drop if dare else 1.0,
            )

        if method in EXACT:
            bc = mx.concatenate(b_list, axis=1)
            ac = mx.concatenate(
                [a * (w * s) for a, w, s in zip(a_list, ws, scales, strict=True)], axis=0
            )
            if rank is not None and rank < bc.shape[1]:
                bc, ac, err, norm2 = factored_svd(bc, ac, rank)
                errors[path] = err
                err_num, err_den = err_num + err * err * norm2, err_den + norm2
            if output == "deltas":
                out_d[path] = bc @ ac
            else:
                out_w[f"{path}.lora_b"], out_w[f"{path}.lora_a"] = bc, ac
        elif method in DENSE:
            r_max = max(a.shape[0] for a in a_list)
            bs = mx.stack([_pad_cols(b * s, r_max) for b, s in zip(b_list, scales, strict=True)])
            as_ = mx.stack([_pad_rows(a, r_max) for a in a_list])
            merged = reduce(bs @ as_, ws, path)
            if output == "deltas":
                out_d[path] = merged
            else:
                r = rank or total_rank
                b, a, err, norm2 = randomized_svd(
                    merged,
                    r,
                    oversample,
                    power_iters,
                    key=mx.random.key(_stable_seed(seed, "svd", path)),
                )
                out_w[f"{path}.lora_b"], out_w[f"{path}.lora_a"] = b, a
                errors[path] = err
                err_num, err_den = err_num + err * err * norm2, err_den + norm2
        else:  # PEFT factor space: sign on A only, √|w·s| on both
            wa = [
                abs(w * s) ** 0.5 * (1 if w * s >= 0 else -1)
                for w, s in zip(ws, scales, strict=True)
            ]
            wb = [abs(w * s) ** 0.5 for w, s in zip(ws, scales, strict=True)]
            a_m = reduce(mx.stack(a_list), wa, f"{path}.lora_a")
            b_m = reduce(mx.stack(b_list), wb, f"{path}.lora_b")
            if output == "deltas":
                out_d[path] = b_m @ a_m
            else:
                out_w[f"{path}.lora_b"], out_w[f"{path}.lora_a"] = b_m, a_m
        mx.eval(out_w, out_d)  # stream: one weight's deltas alive at a time

    rel = (err_num / err_den) ** 0.5 if err_den > 0 else 0.0
    info = {
        "method": method,
        "sources": [c.name or c.task or f"adapter{i}" for i, c in enumerate(configs)],
        "weights": None if weights is None else parse_weights(weights, len(configs)),
        "lam": lam if method == "task_arithmetic" else None,
        "density": density,
        "drop": drop,
        "rank": rank,
        "seed": seed,
        "layer_ranges": layer_ranges if isinstance(layer_ranges, str) else None,
        "majority_sign": majority_sign if elect else None,
        "rel_error": rel,
    }
    if output == "deltas":
        return MergeResult(method, deltas=out_d, errors=errors, rel_error=rel, info=info)
    dims = {}
    for c, w in adapters:
        for p in c.module_paths():
            dims.setdefault(
                parse_module_path(p)[1], (w[f"{p}.lora_a"].shape[1], w[f"{p}.lora_b"].shape[0])
            )
    config = _result_config(configs, out_w, dims, name, info)
    return MergeResult(method, config, out_w, errors=errors, rel_error=rel, info=info)


def _pad_cols(b: mx.array, r: int) -> mx.array:
    return b if b.shape[1] == r else mx.pad(b, [(0, 0), (0, r - b.shape[1])])


def _pad_rows(a: mx.array, r: int) -> mx.array:
    return a if a.shape[0] == r else mx.pad(a, [(0, r - a.shape[0]), (0, 0)])


def _result_config(
    configs: list[AdapterConfig],
    out_w: dict[str, mx.array],
    dims: dict[str, tuple[int, int]],
    name: str | None,
    info: dict,
) -> AdapterConfig:
    """A scale-1 config (alpha = rank per module) covering the union of targets × layers.

    Modules of that product no merged delta reaches get rank-1 zero factors, so the
    result is a valid adapter whose ΔW there is exactly 0.
    """
    targets = [t for t in TARGET_PARENT if any(t in c.targets for c in configs)]
    layers = sorted({layer for c in configs for layer in c.layers})
    ranks: dict[str, int] = {}
    for layer in layers:
        for t in targets:
            p = f"model.layers.{layer}.{TARGET_PARENT[t]}.{t}"
            if f"{p}.lora_a" not in out_w:
                in_dim, out_dim = dims[t]
                out_w[f"{p}.lora_a"] = mx.zeros((1, in_dim))
                out_w[f"{p}.lora_b"] = mx.zeros((out_dim, 1))
            ranks[p] = out_w[f"{p}.lora_a"].shape[0]
    top = max(ranks.values())
    pattern = {p: r for p, r in ranks.items() if r != top}
    return AdapterConfig(
        rank=top,
        alpha=float(top),
        targets=targets,
        layers=layers,
        use_rslora=False,
        rank_pattern=pattern,
        alpha_pattern={p: float(r) for p, r in pattern.items()},
        base_model=dict(configs[0].base_model),
        name=name or "merged",
        created_by="mixlora merge",
        extra={"merge": {k: v for k, v in info.items() if v is not None}},
    )
