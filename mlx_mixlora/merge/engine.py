"""`merge_adapters`: run a `Method` over `Adapter`s, one target weight at a time.

For each module the kind's step builds the method's input from the adapters
present there (weight ≠ 0 at that layer), the method merges it, and the result
is kept as factors (compressed by SVD where asked) or as a dense ΔW. Modules
run two at a time on the CPU (`cpu.streams`), so two modules' deltas are alive
at once, not all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..adapter_format import (
    TARGET_PARENT,
    Adapter,
    AdapterConfig,
    check_weights,
    module_path,
    parse_module_path,
    save_adapter,
)
from ..cpu.streams import map_on_streams
from ..errors import MixloraError
from ..identity import describe, identity_mismatch
from .kernels import Stack, stable_seed
from .layers import layer_weight_fn, parse_weights
from .methods import Method, get_method
from .options import MergeOptions
from .svd import factored_svd, randomized_svd

_IDENTITY_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "num_key_value_heads")


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
        if not self.low_rank:
            raise MixloraError(
                f"the {self.method} result holds dense deltas; pass a rank to save it"
            )
        return save_adapter(out_dir, self.config, self.weights, overwrite=overwrite)

    def updates(self) -> dict[str, Any]:
        """What `fuse_deltas` takes: factor pairs when low-rank, dense ΔW otherwise."""
        return self.factors() if self.low_rank else dict(self.deltas)


def check_compatible(adapters: Sequence[Adapter]) -> None:
    """Same base (shapes + identity, see `identity.identity_mismatch`), well-formed weights, equal shapes per shared module."""
    if not adapters:
        raise MixloraError("nothing to merge: give at least one adapter")
    for idx, ad in enumerate(adapters):
        if not isinstance(ad, Adapter):
            raise MixloraError(f"adapter {idx} is not an Adapter (see adapter_format.read_adapter)")
    first = adapters[0].config.base_model
    for idx, ad in enumerate(adapters):
        cfg = ad.config
        check_weights(
            cfg, {k: tuple(v.shape) for k, v in ad.weights.items()}, source=f"adapter {idx}"
        )
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
    for idx, ad in enumerate(adapters):
        for p in ad.module_paths():
            out_in = (ad.weights[f"{p}.lora_b"].shape[0], ad.weights[f"{p}.lora_a"].shape[1])
            if p in shapes and shapes[p][:2] != out_in:
                raise MixloraError(
                    f"{p}: adapter {idx} has shape {list(out_in)} but adapter {shapes[p][2]} has "
                    f"{list(shapes[p][:2])}; adapters for different bases cannot be merged"
                )
            shapes.setdefault(p, (*out_in, idx))


def _f32(x: mx.array) -> mx.array:
    return x.astype(mx.float32)


def _exact(m: Method, o: MergeOptions, path: str, ads, ws, present):
    """Σ wᵢ·sᵢ·BᵢAᵢ as one factor pair: Bs side by side, wᵢsᵢ·Aᵢ stacked (PEFT's `cat`)."""
    pairs = [ad.factors(path, w, on="a") for ad, w in zip(ads, ws, strict=True)]
    return (
        mx.concatenate([_f32(b) for b, _ in pairs], axis=1),
        mx.concatenate([_f32(a) for _, a in pairs], axis=0),
    )


def _dense(m: Method, o: MergeOptions, path: str, ads, ws, present):
    """The method's merge of the stacked ΔWᵢ = sᵢ·BᵢAᵢ (one batched matmul, ranks padded)."""
    pairs = [ad.factors(path) for ad in ads]
    r_max = max(a.shape[0] for _, a in pairs)
    bs = mx.stack([_pad(_f32(b), r_max, axis=1) for b, _ in pairs])
    as_ = mx.stack([_pad(_f32(a), r_max, axis=0) for _, a in pairs])
    return m.combine(Stack(bs @ as_, ws, path, present), o)


def _factor(m: Method, o: MergeOptions, path: str, ads, ws, present):
    """PEFT's factor space: As merged with √|w·s|·sign(w·s), Bs with √|w·s|."""
    sc = [w * ad.config.scale_of(path) for ad, w in zip(ads, ws, strict=True)]
    wa = [abs(x) ** 0.5 * (1 if x >= 0 else -1) for x in sc]
    wb = [abs(x) ** 0.5 for x in sc]
    a_s = mx.stack([_f32(ad.weights[f"{path}.lora_a"]) for ad in ads])
    b_s = mx.stack([_f32(ad.weights[f"{path}.lora_b"]) for ad in ads])
    a_m = m.combine(Stack(a_s, wa, f"{path}.lora_a", present), o)
    b_m = m.combine(Stack(b_s, wb, f"{path}.lora_b", present), o)
    return b_m, a_m


_KINDS = {"exact": _exact, "dense": _dense, "factor": _factor}


def merge_adapters(adapters: Sequence[Adapter], method: str, **options: Any) -> MergeResult:
    """Merge `Adapter`s with `method` (a key of `METHODS`); `options` are `MergeOptions` fields.

    `output="adapter"` returns low-rank factors (exact methods: exact at rank Σr
    unless `rank`; dense methods: randomized SVD to `rank`, default Σr);
    `output="deltas"` returns dense ΔW per module. `mask_fn(key, i, shape)`
    overrides DARE's seeded keep-masks (for parity tests against PEFT).
    """
    m = get_method(method)
    if m.kind == "learned":
        raise MixloraError(
            f"{m.name} learns its coefficients through a model on calibration data: use "
            "merge.learned.learn_merge (mixlora merge --model DIR --calib ...)"
        )
    o = MergeOptions(**options)
    o.check()
    check_compatible(adapters)
    m.check(o, adapters)
    configs = [ad.config for ad in adapters]
    n = len(adapters)
    rank = o.rank if o.rank is not None or m.rank is None else m.rank(adapters)
    n_layers = configs[0].base_model.get("num_hidden_layers") or 1 + max(
        max(c.layers) for c in configs
    )
    base = parse_weights(o.weights, n) if o.weights is not None else [1.0] * n
    wfun = layer_weight_fn(
        [(c.name, c.task) for c in configs],
        n_layers,
        m.weights(base, o) if m.weights else base,
        o.layer_ranges,
        o.layer_weights,
    )
    paths_of = [set(c.module_paths()) for c in configs]
    total_rank = sum(c.rank for c in configs)

    def merge_module(path: str):
        """(path, result, relative SVD error or None, ‖ΔW‖²), evaluated; None if no adapter is there."""
        wv = wfun(parse_module_path(path)[0])
        if o.module_weights is not None and path in o.module_weights:
            wv = parse_weights(o.module_weights[path], n)
        present = [i for i in range(n) if path in paths_of[i] and wv[i] != 0.0]
        if not present:
            return None
        ads, ws = [adapters[i] for i in present], [wv[i] for i in present]
        merged = _KINDS[m.kind](m, o, path, ads, ws, present)
        compress, err, norm2 = None, None, 0.0
        if m.kind == "exact" and rank is not None and rank < merged[0].shape[1]:
            compress = factored_svd(*merged, rank)
        elif m.kind == "dense" and o.output == "adapter":
            key = mx.random.key(stable_seed(o.seed, "svd", path))
            start = mx.concatenate([_f32(ad.weights[f"{path}.lora_a"]) for ad in ads]).T
            compress = randomized_svd(
                merged, rank or total_rank, o.oversample, o.power_iters, key, start=start
            )
        if compress is not None:
            *merged, err, norm2 = compress
        if o.output == "deltas":
            merged = merged if m.kind == "dense" else merged[0] @ merged[1]
        mx.eval(merged)  # in its worker: one module's deltas alive per worker
        return path, merged, err, norm2

    out_w: dict[str, mx.array] = {}
    out_d: dict[str, mx.array] = {}
    errors: dict[str, float] = {}
    err_num = err_den = 0.0
    # Modules are independent: two at a time on CPU streams of their own (QR, SVD and
    # the elementwise kernels run one thread per stream); results in module order. The
    # adapters' arrays are evaluated here first: a lazy array (a load whose dtype the
    # finite check skips) names the stream it was made on, which a worker cannot run.
    mx.eval([ad.weights for ad in adapters])
    for done in map_on_streams(merge_module, _module_order(configs)):
        if done is None:
            continue
        path, merged, err, norm2 = done
        if err is not None:
            errors[path] = err
            err_num, err_den = err_num + err * err * norm2, err_den + norm2
        if o.output == "deltas":
            out_d[path] = merged
        else:
            out_w[f"{path}.lora_b"], out_w[f"{path}.lora_a"] = merged

    rel = (err_num / err_den) ** 0.5 if err_den > 0 else 0.0
    info = {
        "method": m.name,
        "sources": [c.name or c.task or f"adapter{i}" for i, c in enumerate(configs)],
        "weights": None if o.weights is None else parse_weights(o.weights, n),
        "lam": o.lam if "lam" in m.reads else None,
        "density": o.density,
        "drop": o.drop,
        "rank": rank,
        "seed": o.seed,
        "layer_ranges": o.layer_ranges if isinstance(o.layer_ranges, str) else None,
        "majority_sign": o.majority_sign if "majority_sign" in m.reads else None,
        "rel_error": rel,
    }
    if o.output == "deltas":
        return MergeResult(m.name, deltas=out_d, errors=errors, rel_error=rel, info=info)
    config = _result_config(adapters, out_w, o.name, info)
    return MergeResult(m.name, config, out_w, errors=errors, rel_error=rel, info=info)


def _module_order(configs: list[AdapterConfig]) -> list[str]:
    order = {t: i for i, t in enumerate(TARGET_PARENT)}
    paths = {p for c in configs for p in c.module_paths()}
    return sorted(paths, key=lambda p: (parse_module_path(p)[0], order[parse_module_path(p)[1]]))


def _pad(x: mx.array, r: int, axis: int) -> mx.array:
    """Zero-pad the rank axis of a factor to `r`."""
    if x.shape[axis] == r:
        return x
    return mx.pad(x, [(0, r - x.shape[axis]) if i == axis else (0, 0) for i in range(2)])


def _result_config(
    adapters: Sequence[Adapter], out_w: dict[str, mx.array], name: str | None, info: dict
) -> AdapterConfig:
    """A scale-1 config (alpha = rank per module) covering the union of targets × layers.

    Modules of that product no merged delta reaches get rank-1 zero factors, so the
    result is a valid adapter whose ΔW there is exactly 0.
    """
    configs = [ad.config for ad in adapters]
    dims = {}  # target -> (in, out)
    for ad in adapters:
        for p in ad.module_paths():
            a, b = ad.weights[f"{p}.lora_a"], ad.weights[f"{p}.lora_b"]
            dims.setdefault(parse_module_path(p)[1], (a.shape[1], b.shape[0]))
    targets = [t for t in TARGET_PARENT if any(t in c.targets for c in configs)]
    layers = sorted({layer for c in configs for layer in c.layers})
    ranks: dict[str, int] = {}
    for layer in layers:
        for t in targets:
            p = module_path(layer, t)
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
