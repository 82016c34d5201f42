"""AdaMerging++: TIES' masks first, then learned coefficients over the masked adapters.

Per module, each adapter's ΔWᵢ = sᵢ·BᵢAᵢ is trimmed to its top `density`
entries by magnitude, the sign of each entry is elected by total mass over the
trimmed deltas, and each ΔWᵢ keeps only its trimmed entries that agree with the
elected sign (τ̃ᵢ). Unlike TIES, the τ̃ᵢ are not averaged: each becomes an
adapter of its own again (randomized SVD at `rank`, default 2·rᵢ, with the
relative error reported), so AdaMerging can learn Σ λᵢ·τ̃ᵢ as it does for plain
adapters. The trim's exact top-k is `kernels.trim_thresholds`, TIES' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import mlx.core as mx

from ..adapter_format import Adapter
from .kernels import stable_seed, trim_thresholds, zero_entries
from .svd import randomized_svd


def _delta(ad: Adapter, path: str) -> mx.array:
    b, a = ad.factors(path)  # s·B, A
    return b.astype(mx.float32) @ a.astype(mx.float32)


def ties_masked(
    adapters: Sequence[Adapter], density: float, rank: int | None = None, seed: int = 0
) -> tuple[list[Adapter], float]:
    """The adapters' TIES-masked deltas τ̃ᵢ as low-rank adapters, and the overall relative error."""
    factors: list[dict[str, mx.array]] = [{} for _ in adapters]
    ranks: list[dict[str, int]] = [{} for _ in adapters]
    err_num = err_den = 0.0
    paths = sorted({p for a in adapters for p in a.module_paths()})
    for path in paths:
        present = [i for i, a in enumerate(adapters) if path in a.module_paths()]
        d = mx.stack([_delta(adapters[i], path) for i in present])
        thr, excess = trim_thresholds(d, density)
        kept = zero_entries(mx.where(mx.abs(d) >= mx.array(thr)[:, None, None], d, 0.0), excess)
        elected = mx.sign(kept.sum(axis=0))
        masked = mx.where(mx.sign(kept) == elected, kept, 0.0)
        for j, i in enumerate(present):
            r = rank or 2 * adapters[i].config.rank_of(path)
            key = mx.random.key(stable_seed(seed, "ties_masked", path, i))
            b, a, err, norm2 = randomized_svd(masked[j], r, key=key)
            factors[i][f"{path}.lora_b"], factors[i][f"{path}.lora_a"] = b, a
            ranks[i][path] = a.shape[0]
            err_num, err_den = err_num + err * err * norm2, err_den + norm2
        mx.eval(factors)
    out = []
    for ad, w, rk in zip(adapters, factors, ranks, strict=True):
        top = max(rk.values())
        cfg = replace(
            ad.config,
            rank=top,
            alpha=float(top),
            use_rslora=False,
            rank_pattern={p: r for p, r in rk.items() if r != top},
            alpha_pattern={p: float(r) for p, r in rk.items() if r != top},
        )
        out.append(Adapter(cfg, w, ad.name, ad.path, ad.digest))
    return out, (err_num / err_den) ** 0.5 if err_den > 0 else 0.0
