"""Elementwise merge kernels on stacked deltas `D[n, ...]` (one slice per adapter).

- `trim_thresholds` + `zero_entries`: exact top-k by |value| per slice
  (k = int(density·numel), as PEFT); ties at the threshold keep the lowest flat
  indices, so the result is unique. As thresholds, trimming fuses into the merge
  kernel as `|d| >= t` without a mask array.
- `Stack`: what a dense or factor method (`methods.METHODS`) merges — one
  module's slices and their weights — with `Stack.merge` (trim / DARE / elect).
- `merge_slices`: `mx.compile`d elementwise kernels for trim → elect sign →
  weighted (disjoint) merge: one fused loop for weighted sums, two (majority
  sign, then disjoint mean) for TIES; the default everywhere, Metal included.
- `metal_elect_merge`: a hand-written `mx.fast.metal_kernel` for the elect/merge
  step. Opt-in only (`kernel="metal"`): it has never run (no Mac here); it stays
  off by default until a Mac benchmark shows it faster than the compiled path
  and `test_metal_kernel_matches_compiled` has passed there.

The k-th largest |value| is found with NumPy's introselect on a zero-copy view of
the MLX buffer on the CPU backend (9× faster than `mx.partition` here), and with
`mx.partition` elsewhere; both give the same exact threshold. NumPy is imported
by the functions that use it: a merge without trim or DARE (linear, svd, cat)
starts ~0.1 s sooner without it.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from ..errors import MixloraError

if TYPE_CHECKING:
    import numpy as np


def metal_available() -> bool:
    return hasattr(mx.fast, "metal_kernel") and mx.metal.is_available()


def _select_backend(select: str) -> str:
    if select == "auto":
        return "numpy" if mx.default_device() == mx.cpu else "mlx"
    if select not in ("numpy", "mlx"):
        raise MixloraError(f"unknown selection backend {select!r}; use auto, numpy or mlx")
    return select


def trim_thresholds(
    d: mx.array, density: float, select: str = "auto"
) -> tuple[list[float], dict[int, np.ndarray]]:
    """Exact top-k as thresholds: (thr, excess) per slice d[i], k = int(density·numel).

    |d[i]| >= thr[i] keeps exactly k entries once the entries at flat indices
    `excess[i]` are set to 0: those tie with thr[i] beyond the quota (float32
    values do tie at 4M entries), and the lowest indices win.
    """
    import numpy as np

    n = d.shape[0]
    numel = d.size // n
    k = int(density * numel)
    if k <= 0:
        return [float("inf")] * n, {}
    if k >= numel:
        return [0.0] * n, {}
    cut = numel - k
    if _select_backend(select) == "numpy":
        mx.eval(d)
        view = np.array(memoryview(d), copy=False).reshape(n, numel)
        t, below = np.empty(n, view.dtype), np.empty(n, view.dtype)
        a = np.empty(numel, view.dtype)  # one slice's |values| at a time: less memory to fault in
        # Non-negative IEEE floats order as their bit patterns: introselect on the integer
        # view is ~25% faster and picks the very same element.
        bits = a.view(f"i{a.itemsize}")
        for i in range(n):
            np.abs(view[i], out=a)
            bits.partition(cut)
            t[i], below[i] = a[cut], a[:cut].max()
    else:
        a = mx.partition(mx.abs(d.reshape(n, numel)), cut, axis=1)
        t, below = np.array(a[:, cut]), np.array(mx.max(a[:, :cut], axis=1))
    excess = {}
    for i in np.flatnonzero(below == t):
        row = np.abs(np.array(d[i].reshape(-1)))
        tied = np.flatnonzero(row == t[i])
        need = k - int(np.count_nonzero(row > t[i]))
        excess[int(i)] = tied[need:]
    return [float(x) for x in t], excess


def zero_entries(d: mx.array, excess: dict[int, np.ndarray]) -> mx.array:
    """d with the given flat indices of each slice set to 0."""
    import numpy as np

    if not excess:
        return d
    numel = d.size // d.shape[0]
    idx = np.concatenate([i * numel + np.asarray(v, dtype=np.int64) for i, v in excess.items()])
    flat = d.reshape(-1)
    flat[mx.array(idx)] = 0.0
    return flat.reshape(d.shape)


# Fused CPU kernels. MLX fuses each elementwise graph below into one loop, but on
# the CPU backend that loop only stays fast under rules found by measurement here:
# `where` selects raw inputs or constants (arithmetic goes outside it), no boolean
# intermediate feeds two consumers, no division (1/count comes from a `where`
# chain over the small integer count), one output per kernel. The TIES step is
# therefore three loops (weighted agreeing sum, agreeing count, their ratio) of a
# few ms each instead of one slow one; inputs are re-read, nothing else is stored.


def _sum(xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _split(args, n, has_thr, has_mask):
    """(d, t, k, rest); k[i] is (uᵢ, q): entry kept when uᵢ < q (a float draw, not a bool)."""
    d = list(args[:n])
    i = n
    t = list(args[i : i + n]) if has_thr else [None] * n
    i += n if has_thr else 0
    if has_mask:
        k = [(u, args[i + n]) for u in args[i : i + n]]
        i += n + 1
    else:
        k = [None] * n
    return d, t, k, list(args[i:])


def _gate(v, d, t, k):
    """v where dᵢ is kept (|dᵢ| >= tᵢ and uᵢ < q), else 0."""
    v = v if t is None else mx.where(mx.abs(d) >= t, v, 0.0)
    return v if k is None else mx.where(k[0] < k[1], v, 0.0)


def _positive_majority(d, t, k, elect):
    if elect == "total":
        mass = _sum([_gate(d[i], d[i], t[i], k[i]) for i in range(len(d))])
    else:
        sgn = [mx.where(x > 0.0, 1.0, mx.where(x < 0.0, -1.0, 0.0)) for x in d]
        mass = _sum([_gate(sgn[i], d[i], t[i], k[i]) for i in range(len(d))])
    return mass >= 0.0


def _agreeing(val, d, t, k, pos):
    """val where dᵢ is kept and has the elected sign, else 0."""
    return _gate(mx.where(pos, mx.where(d > 0.0, val, 0.0), mx.where(d < 0.0, val, 0.0)), d, t, k)


@functools.cache
def _fused(n: int, elect: str | None, has_thr: bool, has_mask: bool):
    """Compiled kernels for n slices: (weighted sum,) or (agreeing sum, count, ratio)."""

    def weighted(*args):
        d, t, k, rest = _split(args, n, has_thr, has_mask)
        w, scale = rest[:n], rest[n]
        return _sum([_gate(d[i], d[i], t[i], k[i]) * w[i] for i in range(n)]) * scale

    def agree_sum(*args):
        d, t, k, rest = _split(args, n, has_thr, has_mask)
        w, scale = rest[:n], rest[n]
        pos = _positive_majority(d, t, k, elect)
        return _sum([_agreeing(d[i], d[i], t[i], k[i], pos) * w[i] for i in range(n)]) * scale

    def agree_count(*args):
        d, t, k, _ = _split(args, n, has_thr, has_mask)
        pos = _positive_majority(d, t, k, elect)
        return _sum([_agreeing(1.0, d[i], t[i], k[i], pos) for i in range(n)])

    def ratio(num, cnt):  # num / max(cnt, 1) for integer cnt in [0, n], without a division
        inv = mx.where(cnt > 1.5, 0.5, 1.0)
        for j in range(3, n + 1):
            inv = mx.where(cnt > j - 0.5, 1.0 / j, inv)
        return num * inv

    if elect is None:
        return (mx.compile(weighted),)
    return mx.compile(agree_sum), mx.compile(agree_count), mx.compile(ratio)


def _slices(x: mx.array) -> list[mx.array]:
    """x[0], x[1], ... as views of x's buffer (`x[i]` copies each slice: 3×16 MB, ~10 ms here)."""
    return [part.squeeze(0) for part in mx.split(x, x.shape[0])]


def merge_slices(
    d: mx.array,
    w: list[float],
    elect: str | None,
    thr: list[float] | None = None,
    scale: float = 1.0,
    kernel: str = "compiled",
    uniform: mx.array | None = None,
    keep_below: float = 1.0,
) -> mx.array:
    """Merge stacked deltas d[n, ...]: Σ wᵢ·kept(dᵢ), or TIES' elect + disjoint mean.

    An entry of dᵢ is kept when |dᵢ| >= thr[i] (if `thr`) and uniform[i] <
    keep_below (DARE's draws, if `uniform`); kept entries are multiplied by
    `scale` (DARE's 1/(1-p), which never changes a sign). `elect` is None
    (weighted sum), "total" (sign of the summed mass, PEFT's default) or
    "frequency" (sign of the count). `kernel="metal"` runs the elect/merge step
    as the opt-in Metal kernel.
    """
    if elect not in (None, "total", "frequency"):
        raise MixloraError(f"unknown sign election {elect!r}; use total or frequency")
    if kernel not in ("compiled", "metal"):
        raise MixloraError(f"unknown kernel {kernel!r}; use compiled or metal")
    if kernel == "metal" and not metal_available():
        raise MixloraError("kernel 'metal' needs MLX with a Metal device")
    n = d.shape[0]
    u, q = uniform, keep_below
    if elect is not None and kernel == "metal":
        mask = mx.ones(d.shape, dtype=mx.bool_) if u is None else u < q
        if thr is not None:
            t = mx.array(thr).reshape((n,) + (1,) * (d.ndim - 1))
            mask = mask & (mx.abs(d) >= t)
        return metal_elect_merge(d, mask, mx.array(w), elect, scale)
    ds = _slices(d)
    ts = [mx.array(x, dtype=d.dtype) for x in thr] if thr is not None else []
    ks = _slices(u) + [mx.array(q, dtype=mx.float32)] if u is not None else []
    ws = [mx.array(x, dtype=d.dtype) for x in w]
    sc = mx.array(scale, dtype=d.dtype)
    fns = _fused(n, elect, thr is not None, u is not None)
    if elect is None:
        return fns[0](*ds, *ts, *ks, *ws, sc)
    num = fns[0](*ds, *ts, *ks, *ws, sc)
    cnt = fns[1](*ds, *ts, *ks)
    mx.eval(num, cnt)  # measured: evaluating both before the ratio keeps this at ~8 ms/12M
    return fns[2](num, cnt)


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


def metal_elect_merge(
    d: mx.array, keep: mx.array, w: mx.array, elect: str, scale: float = 1.0
) -> mx.array:
    """TIES elect + disjoint mean as one Metal kernel (one thread per output element)."""
    import numpy as np

    numel = int(np.prod(d.shape[1:]))
    kern = _metal_kernel(elect == "frequency")
    (out,) = kern(
        inputs=[d.astype(mx.float32), keep, (w * scale).astype(mx.float32)],
        grid=(numel, 1, 1),
        threadgroup=(min(256, numel), 1, 1),
        output_shapes=[d.shape[1:]],
        output_dtypes=[mx.float32],
    )
    return out.astype(d.dtype)


def dare_uniform(shape: tuple[int, ...], seed: int) -> mx.array:
    """Seeded U[0,1) draws for DARE (entry kept when u < 1 - p).

    NumPy's PCG64 (float32) is 2× faster than `mx.random` on this CPU; the draws
    depend only on `seed`, so a merge is reproducible.
    """
    import numpy as np

    return mx.array(np.random.default_rng(seed).random(shape, dtype=np.float32))


def stable_seed(seed: int, *parts: object) -> int:
    """A seed per (merge seed, module, adapter): draws do not depend on module order."""
    return zlib.crc32(":".join(str(p) for p in (seed, *parts)).encode())


@dataclass(frozen=True)
class Stack:
    """One module's slices for a dense or factor method: d[j] comes from adapter `present[j]`."""

    d: mx.array  # [n, out, in] deltas (dense), or [n, r, in] As / [n, out, r] Bs (factor)
    w: list[float]  # weight per slice
    key: str  # module path (+ ".lora_a"/".lora_b" in factor space): seeds DARE's draws
    present: list[int]

    def draws(self, o: Any) -> mx.array:
        """DARE's U[0,1) per slice (kept when u < 1 - p); `o.mask_fn` maps keep -> 0, drop -> 1."""
        shape = tuple(self.d.shape[1:])
        if o.mask_fn is not None:
            return mx.stack(
                [
                    mx.where(o.mask_fn(self.key, i, shape).astype(mx.bool_), 0.0, 1.0)
                    for i in self.present
                ]
            )
        return mx.stack(
            [dare_uniform(shape, stable_seed(o.seed, self.key, i)) for i in self.present]
        )

    def merge(
        self, o: Any, trim: bool = False, dare: bool = False, elect: bool = False
    ) -> mx.array:
        """Σ wᵢ·kept(dᵢ), or with `elect` TIES' sign election + disjoint mean (`MergeOptions` o).

        `dare` drops entries with probability o.drop and rescales by 1/(1-p);
        `trim` then keeps each slice's top int(o.density·numel) |values|.
        """
        d, uni, scale, thr = self.d, None, 1.0, None
        if dare:
            uni, scale = self.draws(o), 1.0 / (1.0 - o.drop)
        if trim:
            src = d if uni is None else mx.where(uni < 1.0 - o.drop, d, 0.0)
            thr, excess = trim_thresholds(src, o.density, o.select)
            d = zero_entries(d, excess)  # ties beyond the quota
        return merge_slices(
            d,
            self.w,
            o.majority_sign if elect else None,
            thr,
            scale,
            o.kernel,
            uniform=uni,
            keep_below=1.0 - o.drop if dare else 1.0,
        )
