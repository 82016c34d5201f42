"""Adapter switching that reuses the previous fused weights' buffers.

`merge.fuse_deltas` computes ``addmm(W, B', A')`` per weight into a freshly
allocated output (on CPU: copy W, then the GEMM reads and writes it again; fresh
pages also cost page faults). When the model switches from one decision to
another, the weights fused for the old decision are garbage, so `AdapterSwitcher`
writes the new ones into those buffers (MLX donates an input buffer nothing else
holds). Two ways, `method`:

- ``"copy"`` (default): ``addmm(slice_update(old, W), B', A')`` — W is copied into
  the old buffer, then the GEMM updates it in place (no allocation);
- ``"stream"``: rebuild each weight in row chunks (``addmm`` on a chunk of W, then
  `slice_update` into the old buffer) so each chunk's GEMM runs in cache and W is
  read once; many small GEMMs, so it wins only where BLAS calls are cheap.

Restoring is exact: the original arrays are kept and put back, never recomputed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import mlx.core as mx

from ..errors import MixloraError
from .adapters import Adapter
from .fused import decision_updates
from .modules import linear_at
from .routers import Decision


def stream_fuse(
    w: mx.array, b: mx.array, a: mx.array, dst: mx.array | None, chunk_bytes: int
) -> mx.array:
    """W + B·A (lazy), built row chunk by row chunk into `dst` (donated when nothing else holds it)."""
    rows = max(1, chunk_bytes // (w.shape[1] * 4))
    out = dst if dst is not None else mx.zeros(w.shape, dtype=w.dtype)
    b32, a32 = b.astype(mx.float32), a.astype(mx.float32)
    for s in range(0, w.shape[0], rows):
        blk = mx.addmm(w[s : s + rows].astype(mx.float32), b32[s : s + rows], a32).astype(w.dtype)
        out = mx.slice_update(out, blk, mx.array([s]), axes=(0,))
    return out


def copy_fuse(w: mx.array, b: mx.array, a: mx.array, dst: mx.array | None) -> mx.array:
    """W + B·A (lazy): W copied into `dst` (donated), then one in-place GEMM update."""
    if dst is None:
        return mx.addmm(w.astype(mx.float32), b.astype(mx.float32), a.astype(mx.float32)).astype(
            w.dtype
        )
    if w.dtype != mx.float32:
        return mx.slice_update(dst, copy_fuse(w, b, a, None), mx.array([0]), axes=(0,))
    base = mx.slice_update(dst, w, mx.array([0]), axes=(0,))
    return mx.addmm(base, b.astype(mx.float32), a.astype(mx.float32))


class AdapterSwitcher:
    """Puts one decision at a time into the model's Linear weights; `restore()` is bit-exact."""

    def __init__(
        self,
        model: Any,
        adapters: list[Adapter],
        chunk_bytes: int = 1024 * 1024,
        method: str = "copy",
    ):
        if method not in ("copy", "stream"):
            raise MixloraError(f"unknown switch method {method!r}; use copy or stream")
        self.model, self.adapters, self.chunk_bytes = model, adapters, chunk_bytes
        self.method = method
        self._orig: dict[str, mx.array] = {}  # path -> the base weight, while a fused one is in
        self._spare: dict[str, mx.array] = {}  # path -> a buffer free for reuse

    @property
    def active(self) -> bool:
        return bool(self._orig)

    def apply(self, decision: Decision) -> None:
        """Switch to `decision` (restoring whatever was fused before)."""
        self.restore()
        if not decision.indices:
            return
        updates = decision_updates(self.adapters, decision)
        mods = {p: linear_at(self.model, p) for p in updates}  # validate before changing anything
        new = {}
        for p, (b, a) in updates.items():
            w = mods[p].weight
            dst = self._spare.pop(p, None)
            if dst is not None and (dst.shape != w.shape or dst.dtype != w.dtype):
                dst = None
            if self.method == "stream":
                new[p] = stream_fuse(w, b, a, dst, self.chunk_bytes)
            else:
                new[p] = copy_fuse(w, b, a, dst)
            del dst
        mx.eval(new)
        for p, w in new.items():
            self._orig[p] = mods[p].weight
            mods[p].weight = w

    def restore(self) -> None:
        """Put the original weight arrays back; the fused ones become spare buffers."""
        for p, w in self._orig.items():
            m = linear_at(self.model, p)
            self._spare[p] = m.weight
            m.weight = w
        self._orig = {}

    def release(self) -> None:
        """Restore and drop the spare buffers (frees one copy of the adapted weights)."""
        self.restore()
        self._spare = {}

    @contextlib.contextmanager
    def fused(self, decision: Decision) -> Iterator[None]:
        self.apply(decision)
        try:
            yield
        finally:
            self.restore()
