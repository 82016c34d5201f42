"""Random adapters on tiny-Llama shapes and plain-NumPy references of each merge method's math."""

from __future__ import annotations

import zlib

import mlx_mixlora  # noqa: F401  (BLAS preload before mlx; conftest does it first anyway)

# isort: split
import mlx.core as mx
import numpy as np

from mlx_mixlora.adapter_format import Adapter, AdapterConfig

HIDDEN, KV = 64, 32
DIMS = {
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (HIDDEN, KV),
    "v_proj": (HIDDEN, KV),
    "o_proj": (HIDDEN, HIDDEN),
}
BASE = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "vocab_size": 256, "num_key_value_heads": 2}


def make_adapter(
    seed: int,
    rank: int = 4,
    targets=("q_proj", "v_proj"),
    layers=(0, 1),
    alpha: float = 8.0,
    name: str | None = None,
    rslora: bool = False,
    rank_pattern: dict | None = None,
    base: dict | None = None,
) -> Adapter:
    """An `Adapter` with non-zero random A and B (B is zero at init in training, not here)."""
    rng = np.random.default_rng(seed)
    cfg = AdapterConfig(
        rank=rank,
        alpha=alpha,
        targets=list(targets),
        layers=list(layers),
        use_rslora=rslora,
        rank_pattern=dict(rank_pattern or {}),
        base_model=dict(BASE if base is None else base),
        name=name,
    )
    w = {}
    for p in cfg.module_paths():
        t = p.rsplit(".", 1)[1]
        d_in, d_out = DIMS[t]
        r = cfg.rank_of(p)
        w[f"{p}.lora_a"] = mx.array(rng.standard_normal((r, d_in)).astype(np.float32) * 0.3)
        w[f"{p}.lora_b"] = mx.array(rng.standard_normal((d_out, r)).astype(np.float32) * 0.3)
    return Adapter(cfg, w, name=name or "")


def np_delta(adapter: Adapter, path) -> np.ndarray:
    cfg, w = adapter.config, adapter.weights
    return cfg.scale_of(path) * (
        np.array(w[f"{path}.lora_b"], dtype=np.float64)
        @ np.array(w[f"{path}.lora_a"], dtype=np.float64)
    )


def np_topk_mask(x: np.ndarray, density: float) -> np.ndarray:
    """Exact top-k by |x|, ties broken by lowest flat index."""
    flat = np.abs(x).ravel()
    k = int(density * flat.size)
    order = np.lexsort((np.arange(flat.size), -flat))
    mask = np.zeros(flat.size, bool)
    mask[order[:k]] = True
    return mask.reshape(x.shape)


def np_ties(ds, ws, density=None, elect="total", keep=None, scale=1.0):
    """TIES (PEFT's math): trim unweighted, elect on unweighted, disjoint weighted mean."""
    ts = []
    for i, d in enumerate(ds):
        m = np.ones(d.shape, bool) if keep is None else keep[i].astype(bool)
        t = np.where(m, d * scale, 0.0)
        if density is not None:
            t = np.where(np_topk_mask(t, density), t, 0.0)
        ts.append(t)
    t = np.stack(ts)
    sgn = np.sign(t)
    mass = t.sum(0) if elect == "total" else sgn.sum(0)
    maj = np.where(mass >= 0, 1.0, -1.0)
    agree = sgn == maj
    w = np.asarray(ws, dtype=np.float64).reshape(-1, *([1] * (t.ndim - 1)))
    return (t * w * agree).sum(0) / np.maximum(agree.sum(0), 1)


def np_weighted(ds, ws, density=None, keep=None, scale=1.0):
    """Σ wᵢ·(trimmed / dropped-and-rescaled) dᵢ."""
    out = 0.0
    for i, (d, w) in enumerate(zip(ds, ws, strict=True)):
        m = np.ones(d.shape, bool) if keep is None else keep[i].astype(bool)
        t = np.where(m, d * scale, 0.0)
        if density is not None:
            t = np.where(np_topk_mask(t, density), t, 0.0)
        out = out + w * t
    return out


def np_mask(key: str, i: int, shape) -> np.ndarray:
    """A deterministic keep-mask per (module key, adapter) for DARE parity tests (keep prob 0.6)."""
    rng = np.random.default_rng(zlib.crc32(f"{key}:{i}".encode()))
    return rng.random(shape) < 0.6


def assert_close(a, b, tol=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"max abs diff {err:.3g} > {tol * scale:.3g}"
