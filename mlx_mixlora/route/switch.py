"""Adapter switching that reuses the previous fused weights' buffers.

`fuse.fuse_deltas` computes ``addmm(W, B', A')`` per weight into a freshly
allocated output (on CPU: copy W, then the GEMM reads and writes it again; fresh
pages also cost page faults). When the model switches from one decision to
another, the weights fused for the old decision are garbage, so `AdapterSwitcher`
writes the new ones into those buffers (MLX donates an input buffer nothing else
holds). Both ways fuse with `fuse.fused_weight`, `method`:

- ``"delta"`` (default): the old buffer holds W + B₀·A₀, so the new weights are
  one in-place GEMM away: ``addmm(old, [-B₀ | B₁], [A₀ ; A₁])`` — one read and one
  write of the weights, no copy of W. The result differs from a fresh fuse by
  float rounding (a few ulps per switch), so after `refresh_every` deltas, and
  always for weights that are not float32 (where one rounding is ~1e-3), the next
  switch is an exact ``"copy"`` fuse. Re-applying the decision a spare buffer
  already holds costs nothing;
- ``"copy"``: ``addmm(slice_update(old, W), B', A')`` — W is copied into the old
  buffer, then the GEMM updates it in place (no allocation), bit-identical to a
  fresh fuse.

Restoring is exact in both methods: the original arrays are kept and put back,
never recomputed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from ..adapter_format import Adapter
from ..errors import MixloraError
from ..fuse import fused_weight
from ..modules import linear_at
from .decision import Decision, decision_updates


def copy_fuse(w: mx.array, b: mx.array, a: mx.array, dst: mx.array | None) -> mx.array:
    """W + B·A (lazy): W copied into `dst` (donated), then one in-place GEMM update.

    Not float32: the fp32 sum is computed apart and its cast copied into `dst`.
    """
    if dst is None:
        return fused_weight(w, (b, a))
    if w.dtype != mx.float32:
        return _into(dst, fused_weight(w, (b, a)))
    return fused_weight(_into(dst, w), (b, a))


def _into(dst: mx.array, x: mx.array) -> mx.array:
    return mx.slice_update(dst, x, mx.array([0]), axes=(0,))


def delta_fuse(
    old: mx.array, old_ba: tuple[mx.array, mx.array], ba: tuple[mx.array, mx.array]
) -> mx.array:
    """(W + B₀·A₀) − B₀·A₀ + B₁·A₁ (lazy): one in-place GEMM of rank r₀ + r₁ on `old` (donated)."""
    (b0, a0), (b1, a1) = old_ba, ba
    b = mx.concatenate([-b0.astype(mx.float32), b1.astype(mx.float32)], axis=1)
    a = mx.concatenate([a0.astype(mx.float32), a1.astype(mx.float32)], axis=0)
    return fused_weight(old, (b, a))


@dataclass
class _Fused:
    """A buffer holding W + B·A for one weight, and how it got there."""

    buf: mx.array
    base: mx.array  # the W it was built from (a delta is valid only on the same W)
    key: tuple  # the decision (indices, weights) it holds
    ba: tuple[mx.array, mx.array]
    deltas: int  # delta updates since the last exact fuse


def _key(decision: Decision) -> tuple:
    return tuple(decision.indices), tuple(float(w) for w in decision.weights)


class AdapterSwitcher:
    """Puts one decision at a time into the model's Linear weights; `restore()` is bit-exact."""

    METHODS = ("delta", "copy")

    def __init__(
        self, model: Any, adapters: list[Adapter], method: str = "delta", refresh_every: int = 16
    ):
        if method not in self.METHODS:
            raise MixloraError(
                f"unknown switch method {method!r}; use one of {', '.join(self.METHODS)}"
            )
        if refresh_every < 0:
            raise MixloraError(f"refresh_every must be >= 0, got {refresh_every}")
        self.model, self.adapters = model, adapters
        self.method, self.refresh_every = method, refresh_every
        self._orig: dict[str, mx.array] = {}  # path -> the base weight, while a fused one is in
        self._live: dict[str, _Fused] = {}  # path -> the fused weight now in the model
        self._spare: dict[str, _Fused] = {}  # path -> a buffer free for reuse

    @property
    def active(self) -> bool:
        return bool(self._orig)

    def apply(self, decision: Decision) -> None:
        """Switch to `decision` (restoring whatever was fused before)."""
        self.restore()
        if not decision.indices:
            return
        key = _key(decision)
        updates = decision_updates(self.adapters, decision)
        mods = {p: linear_at(self.model, p) for p in updates}  # validate before changing anything
        new: dict[str, _Fused] = {}
        for p, ba in updates.items():
            w = mods[p].weight
            spare = self._spare.pop(p, None)
            if spare is not None and (spare.buf.shape != w.shape or spare.buf.dtype != w.dtype):
                spare = None
            new[p] = self._fuse(w, ba, key, spare)
            del spare
        mx.eval([f.buf for f in new.values()])
        for p, f in new.items():
            self._orig[p] = mods[p].weight
            mods[p].weight = f.buf
        self._live = new

    def _fuse(self, w: mx.array, ba: tuple, key: tuple, spare: _Fused | None) -> _Fused:
        """The fused weight for one path, built in `spare`'s buffer when there is one."""
        if spare is None:
            return _Fused(copy_fuse(w, *ba, None), w, key, ba, 0)
        same_base = spare.base is w
        if self.method == "delta" and same_base and spare.key == key:
            return spare  # the buffer already holds this decision
        buf, old_ba, deltas = spare.buf, spare.ba, spare.deltas
        spare.buf = None  # drop every reference so MLX can donate the buffer
        delta_ok = same_base and w.dtype == mx.float32 and deltas < self.refresh_every
        if self.method == "delta" and delta_ok:
            return _Fused(delta_fuse(buf, old_ba, ba), w, key, ba, deltas + 1)
        return _Fused(copy_fuse(w, *ba, buf), w, key, ba, 0)

    def restore(self) -> None:
        """Put the original weight arrays back; the fused ones become spare buffers."""
        for p, w in self._orig.items():
            linear_at(self.model, p).weight = w
        self._spare.update(self._live)
        self._orig, self._live = {}, {}

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


def fused_groups(
    model: Any, adapters: list[Adapter], decisions: Sequence[Decision]
) -> Iterator[list[int]]:
    """Indices of each group of equal decisions, yielded with that decision fused in.

    One switch per distinct decision (weights equal to 6 decimals), through one
    `AdapterSwitcher`; the base weights are back when the loop ends.
    """
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(decisions):
        groups.setdefault((tuple(d.indices), tuple(round(w, 6) for w in d.weights)), []).append(i)
    switcher = AdapterSwitcher(model, adapters)
    try:
        for members in groups.values():
            with switcher.fused(decisions[members[0]]):
                yield members
    finally:
        switcher.release()
