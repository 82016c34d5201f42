"""Per-layer weight vectors: layer ranges (`cls:0-7,qa:8-14`), even depth splits, explicit vectors.

Every merge method takes, for each decoder layer, one weight per adapter. A
global `--weights` list gives every layer the same vector; layer ranges give
each layer a one-hot vector (the seed's "lower layers classification, middle
QA, upper summarization"); explicit per-layer vectors cover the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..errors import MixloraError

_RANGE_RE = re.compile(r"^\s*([^:\s]+)\s*:\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def adapter_index(ref: str, names: Sequence[Sequence[str | None]]) -> int:
    """Resolve an adapter reference: its config name, its task, or its 0-based position."""
    hits = [i for i, aliases in enumerate(names) if ref in [a for a in aliases if a]]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise MixloraError(f"adapter reference {ref!r} is ambiguous (matches positions {hits})")
    if ref.isdigit() and int(ref) < len(names):
        return int(ref)
    known = sorted({a for aliases in names for a in aliases if a})
    raise MixloraError(
        f"unknown adapter {ref!r} in layer ranges; use a name/task ({', '.join(known) or 'none'}) "
        f"or a position 0-{len(names) - 1}"
    )


def parse_layer_ranges(
    spec: str, names: Sequence[Sequence[str | None]], n_layers: int
) -> dict[int, int]:
    """`"cls:0-7,qa:8-14,sum:15-21"` → {layer: adapter index}; `"even"` splits depth evenly.

    Ranges are inclusive, must lie inside [0, n_layers) and must not overlap.
    Layers no range covers take no adapter (ΔW = 0 there).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise MixloraError("layer ranges are empty; use e.g. cls:0-7,qa:8-14,sum:15-21 or 'even'")
    if spec.strip() == "even":
        return even_split(len(names), n_layers)
    owner: dict[int, int] = {}
    for part in spec.split(","):
        m = _RANGE_RE.match(part)
        if not m:
            raise MixloraError(
                f"bad layer range {part.strip()!r}; expected NAME:FIRST-LAST, e.g. qa:8-14"
            )
        idx = adapter_index(m.group(1), names)
        lo = int(m.group(2))
        hi = int(m.group(3)) if m.group(3) is not None else lo
        if lo > hi:
            raise MixloraError(f"layer range {part.strip()!r} ends before it starts")
        if hi >= n_layers:
            raise MixloraError(
                f"layer range {part.strip()!r} goes past the last layer ({n_layers - 1})"
            )
        for layer in range(lo, hi + 1):
            if layer in owner:
                raise MixloraError(f"layer {layer} is in more than one layer range")
            owner[layer] = idx
    return owner


def even_split(n_adapters: int, n_layers: int) -> dict[int, int]:
    """Contiguous, near-equal depth blocks in adapter order (earlier blocks take the remainder)."""
    if n_adapters < 1 or n_layers < n_adapters:
        raise MixloraError(f"cannot split {n_layers} layers evenly among {n_adapters} adapters")
    base, extra = divmod(n_layers, n_adapters)
    owner, layer = {}, 0
    for i in range(n_adapters):
        for _ in range(base + (1 if i < extra else 0)):
            owner[layer] = i
            layer += 1
    return owner


def parse_layer_weights(spec: str, n_adapters: int, n_layers: int) -> dict[int, list[float]]:
    """`"0-7=1,0,0;8-21=0.2,0.8,0"` → {layer: weight vector} (one weight per adapter)."""
    out: dict[int, list[float]] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise MixloraError(f"bad layer weights {part.strip()!r}; expected FIRST-LAST=w1,w2,...")
        rng, vec = part.split("=", 1)
        m = re.match(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$", rng)
        if not m:
            raise MixloraError(f"bad layer range {rng.strip()!r} in layer weights")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        ws = parse_weights(vec, n_adapters)
        if lo > hi or hi >= n_layers:
            raise MixloraError(f"layer range {rng.strip()!r} is outside 0-{n_layers - 1}")
        for layer in range(lo, hi + 1):
            if layer in out:
                raise MixloraError(f"layer {layer} has more than one weight vector")
            out[layer] = ws
    if not out:
        raise MixloraError("layer weights are empty")
    return out


def parse_weights(spec: str | Sequence[float], n_adapters: int) -> list[float]:
    """`"0.5,0.3,0.2"` (or a list) → floats, exactly one per adapter."""
    if isinstance(spec, str):
        try:
            ws = [float(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise MixloraError(f"weights {spec!r} are not comma-separated numbers") from None
    else:
        ws = [float(x) for x in spec]
    if len(ws) != n_adapters:
        raise MixloraError(f"got {len(ws)} weights for {n_adapters} adapters")
    if any(w != w or w in (float("inf"), float("-inf")) for w in ws):
        raise MixloraError(f"weights must be finite numbers, got {ws}")
    return ws


def layer_weight_fn(
    names: Sequence[Sequence[str | None]],
    n_layers: int,
    base: list[float],
    layer_ranges: str | dict[int, int] | None = None,
    layer_weights: str | dict[int, Sequence[float]] | None = None,
) -> Callable[[int], list[float]]:
    """The weight vector each layer merges with: `base`, one-hot by range, or given per layer.

    `names` are each adapter's aliases (name, task) for the ranges. A layer no
    range covers takes no adapter; one no per-layer vector covers takes `base`.
    """
    n = len(names)
    if layer_ranges is not None:
        if isinstance(layer_ranges, str):
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
