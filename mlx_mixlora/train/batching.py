"""Batches for the trainer: packed rows or length-sorted padded rows.

A batch is `batch_size` examples whether packed or not (packing only removes
padding). It carries inputs [B, L] plus the flat indices of the positions whose
next token is a loss target, so the LM head runs on those rows only. Packing
puts a batch's examples into few rows (first-fit decreasing); `segments` and
`positions` then give a block-diagonal causal mask and per-example RoPE
positions. Shapes are rounded up to buckets so `mx.compile` sees few shapes.
Batch order is a pure function of (seed, epoch): resuming needs no RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Tokenized

LEN_BUCKET = 32
TARGET_BUCKET = 32


@dataclass
class Batch:
    tokens: np.ndarray  # [B, L] int32 inputs
    labels: np.ndarray  # [T] int32 next tokens at the target rows
    target_idx: np.ndarray | None  # [T] int32 flat indices into B*L; None = every position
    weights: np.ndarray  # [T] float32, 0 for bucket padding
    positions: np.ndarray | None = None  # [B, L] int32 (packing only)
    segments: np.ndarray | None = None  # [B, L] int32 (packing only)
    n_tokens: int = 0  # real (non-padding) input tokens
    n_targets: int = 0


def _round_up(n: int, k: int) -> int:
    return max(k, -(-n // k) * k)


def pack_rows(items: list[Tokenized], order: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit decreasing: example indices per row, each row's inputs <= capacity."""
    lens = np.array([len(items[i].ids) - 1 for i in order])
    by_len = order[np.argsort(-lens, kind="stable")]
    rows: list[list[int]] = []
    free: list[int] = []
    for i in by_len:
        n = len(items[i].ids) - 1
        for r, f in enumerate(free):
            if n <= f:
                rows[r].append(int(i))
                free[r] -= n
                break
        else:
            rows.append([int(i)])
            free.append(capacity - n)
    return rows


def make_batch(items: list[Tokenized], rows: list[list[int]], max_len: int, packed: bool) -> Batch:
    """Lay out `rows` (lists of example indices) into one Batch."""
    fill = [sum(len(items[i].ids) - 1 for i in row) for row in rows]
    L = min(_round_up(max(fill), LEN_BUCKET), max(max_len, max(fill)))
    B = len(rows)
    tokens = np.zeros((B, L), np.int32)
    positions = np.zeros((B, L), np.int32)
    segments = np.full((B, L), -1, np.int32)
    idx, labels = [], []
    for r, row in enumerate(rows):
        o = 0
        for s, i in enumerate(row):
            ids = items[i].ids
            n = len(ids) - 1
            tokens[r, o : o + n] = ids[:-1]
            positions[r, o : o + n] = np.arange(n)
            segments[r, o : o + n] = s
            t0 = items[i].target_start - 1
            idx.extend(range(r * L + o + t0, r * L + o + n))
            labels.extend(ids[t0 + 1 :])
            o += n
    n_tokens = sum(fill)
    T = len(idx)
    dense = T == B * L
    Tb = T if dense else _round_up(T, TARGET_BUCKET)
    target_idx = None if dense else np.zeros(Tb, np.int32)
    lab = np.zeros(Tb, np.int32)
    w = np.zeros(Tb, np.float32)
    if target_idx is not None:
        target_idx[:T] = idx
    lab[:T] = labels
    w[:T] = 1.0
    multi = packed and any(len(row) > 1 for row in rows)
    return Batch(
        tokens=tokens,
        labels=lab,
        target_idx=target_idx,
        weights=w,
        positions=positions if multi else None,
        segments=segments if multi else None,
        n_tokens=n_tokens,
        n_targets=T,
    )


def epoch_rows(
    items: list[Tokenized], batch_size: int, max_len: int, pack: bool, seed: int, epoch: int
) -> list[list[list[int]]]:
    """The batches (each a list of rows of example indices) of one epoch.

    A batch is `batch_size` examples of similar length (the last one of an
    epoch may hold fewer), one example per row; packing lays the same examples
    into as few rows of `max_len` as fit, so it removes padding and nothing else:
    packed or not, a step trains on the same examples.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(items))
    lens = np.array([len(items[i].ids) for i in order])
    by_len = order[np.argsort(lens, kind="stable")]
    groups = [by_len[k : k + batch_size] for k in range(0, len(by_len), batch_size)]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    if pack:
        return [pack_rows(items, g, max_len) for g in groups]
    return [[[int(i)] for i in g] for g in groups]


def batches_per_epoch(
    items: list[Tokenized], batch_size: int, max_len: int, pack: bool, seed: int
) -> int:
    return len(epoch_rows(items, batch_size, max_len, pack, seed, 0))


def iterate_rows(
    items: list[Tokenized], batch_size: int, max_len: int, pack: bool, seed: int, start: int = 0
):
    """Endless batches (lists of rows) in a reproducible order, from global batch `start`."""
    epoch, k = 0, start
    while True:
        plan = epoch_rows(items, batch_size, max_len, pack, seed, epoch)
        if k < len(plan):
            yield from plan[k:]
            k = 0
        else:
            k -= len(plan)
        epoch += 1


def run_totals(
    items: list[Tokenized], batch_size: int, max_len: int, seed: int, n_batches: int, start: int = 0
) -> tuple[int, int]:
    """(examples, input tokens) that batches `start`..`n_batches` of a run train on.

    Packing does not change which examples a batch holds, so the unpacked plan counts both.
    """
    examples = tokens = 0
    batches = iterate_rows(items, batch_size, max_len, False, seed, start=start)
    for _ in range(n_batches - start):
        for row in next(batches):
            examples += len(row)
            tokens += sum(len(items[i].ids) - 1 for i in row)
    return examples, tokens
