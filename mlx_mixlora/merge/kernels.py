"""Elementwise merge kernels on stacked deltas `D[n, ...]` (one slice per adapter).

- `topk_mask`: exact top-k by |value| per slice (k = int(density·numel), as PEFT);
  ties at the threshold keep the lowest flat indices, so the result is unique.
- `combine`: one `mx.compile`d elementwise pass for trim → elect sign → weighted
  (disjoint) merge; the tested default everywhere.
- `metal_elect_merge`: a hand-written `mx.fast.metal_kernel` for the elect/merge
  step, used only when Metal exists (parity test runs there, skipped elsewhere).

The k-th largest |value| is found with NumPy's introselect on a zero-copy view of
the MLX buffer on the CPU backend (9× faster than `mx.partition` here), and with
`mx.partition` elsewhere; both give the same exact threshold.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np

from ..errors import MixloraError


def metal_available() -> bool:
    return hasattr(mx.fast, "metal_kernel") and mx.metal.is_available()


def kth_largest(a: mx.array, k: int, select: str = "auto") -> mx.array:
    """Per row of `a` [n, N] (non-negative), the k-th largest value (1 ≤ k ≤ N)."""
    n_cols = a.shape[-1]
    if select == "auto":
        select = "numpy" if mx.default_device() == mx.cpu else "mlx"
    if select == "numpy":
        mx.eval(a)
        view = np.array(memoryview(a), copy=False)
        return mx.array(np.partition(view, n_cols - k, axis=-1)[:, n_cols - k])
    return mx.partition(a, n_cols - k, axis=-1)[:, n_cols - k]


def topk_mask(d: mx.array, density: float, select: str = "auto") -> mx.array:
    """Boolean mask keeping exactly int(density·numel) largest-|x| entries of each slice d[i]."""
    n = d.shape[0]
    flat = mx.abs(d.reshape(n, -1))
    numel = flat.shape[1]
    k = int(density * numel)
    if k <= 0:
        return mx.zeros(d.shape, dtype=mx.bool_)
    if k >= numel:
        return mx.ones(d.shape, dtype=mx.bool_)
    t = kth_largest(flat, k, select)[:, None]
    gt = flat > t
    eq = flat == t
    n_gt = mx.sum(gt, axis=1, keepdims=True)
    n_eq = mx.sum(eq, axis=1, keepdims=True)
    if bool(mx.all(n_gt + n_eq == k)):
        keep = gt | eq
    else:  # ties straddle the threshold: keep the lowest-index ones
        rank_eq = mx.cumsum(eq.astype(mx.int32), axis=1)
        keep = gt | (eq & (rank_eq <= (k - n_gt)))
    return keep.reshape(d.shape)


def _combine_impl(d, keep, w, scale, *, elect: str | None):
    t = mx.where(keep, d * scale, mx.zeros_like(d))
    wv = w.reshape((-1,) + (1,) * (d.ndim - 1))
    if elect is None:
        return mx.sum(t * wv, axis=0)
    sgn = mx.sign(t)
    mass = mx.sum(t, axis=0) if elect == "total" else mx.sum(sgn, axis=0)
    maj = mx.where(mass >= 0, 1.0, -1.0).astype(d.dtype)
    agree = sgn == maj
    num = mx.sum(mx.where(agree, t * wv, mx.zeros_like(t)), axis=0)
    cnt = mx.sum(agree, axis=0).astype(d.dtype)
    return num / mx.maximum(cnt, 1.0)


@functools.cache
def _compiled(elect: str | None):
    return mx.compile(functools.partial(_combine_impl, elect=elect))


def combine(
    d: mx.array,
    keep: mx.array | None,
    w: mx.array,
    elect: str | None,
    scale: float = 1.0,
    kernel: str = "auto",
) -> mx.array:
    """Merge stacked deltas: Σ wᵢ·dᵢ over kept entries, or TIES' elect + disjoint mean.

    Kept entries are first multiplied by `scale` (DARE's 1/(1-p)). `elect` is
    None (weighted sum), "total" (sign of the summed mass) or "frequency" (sign
    of the count). `keep` None keeps everything.
    """
    if elect not in (None, "total", "frequency"):
        raise MixloraError(f"unknown sign election {elect!r}; use total or frequency")
    if keep is None:
        keep = mx.ones(d.shape, dtype=mx.bool_)
    w = w.astype(d.dtype)
    if kernel == "metal" or (kernel == "auto" and elect is not None and metal_available()):
        if not metal_available():
            raise MixloraError("kernel 'metal' needs MLX with a Metal device")
        if elect is not None:
            return metal_elect_merge(d * scale if scale != 1.0 else d, keep, w, elect)
    if kernel not in ("auto", "compiled", "metal"):
        raise MixloraError(f"unknown kernel {kernel!r}; use auto, compiled or metal")
    return _compiled(elect)(d, keep, w, mx.array(scale, dtype=d.dtype))


_METAL_SOURCE = """
    uint idx = thread_position_in_grid.x;
    uint n = d_shape[0];
    uint numel = 1;
    for (int j = 1; j < d_ndim; ++j) numel *= d_shape[j];
    if (idx >= numel) return;
    float mass = 0.0f;
    for (uint i = 0; i < n; ++i) {
        float v = keep[i * numel + idx] ? float(d[i * numel + idx]) : 0.0f;
        mass += FREQ ? float((v > 0.0f) - (v < 0.0f)) : v;
    }
    float maj = mass >= 0.0f ? 1.0f : -1.0f;
    float num = 0.0f;
    float cnt = 0.0f;
    for (uint i = 0; i < n; ++i) {
        float v = keep[i * numel + idx] ? float(d[i * numel + idx]) : 0.0f;
        float s = float((v > 0.0f) - (v < 0.0f));
        if (s == maj) { num += v * float(w[i]); cnt += 1.0f; }
    }
    out[idx] = num / max(cnt, 1.0f);
"""


@functools.cache
def _metal_kernel(freq: bool):
    return mx.fast.metal_kernel(
        name=f"mixlora_ties_elect_{'freq' if freq else 'total'}",
        input_names=["d", "keep", "w"],
        output_names=["out"],
        source=_METAL_SOURCE.replace("FREQ", "true" if freq else "false"),
    )


def metal_elect_merge(d: mx.array, keep: mx.array, w: mx.array, elect: str) -> mx.array:
    """TIES elect + disjoint mean as one Metal kernel (one thread per output element)."""
    numel = int(np.prod(d.shape[1:]))
    kern = _metal_kernel(elect == "frequency")
    (out,) = kern(
        inputs=[d.astype(mx.float32), keep, w.astype(mx.float32)],
        grid=(numel, 1, 1),
        threadgroup=(min(256, numel), 1, 1),
        output_shapes=[d.shape[1:]],
        output_dtypes=[mx.float32],
    )
    return out.astype(d.dtype)


def dare_mask(shape: tuple[int, ...], drop: float, key: mx.array) -> mx.array:
    """Seeded keep-mask: each entry survives with probability 1 - drop."""
    return mx.random.bernoulli(1.0 - drop, shape, key=key)
