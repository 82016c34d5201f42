"""Which model a base is, independent of the dtype or quantisation it was converted to.

An adapter is valid on every conversion of the model it was trained on: fp32 on
Linux, fp16 on a Mac, 4-bit for QLoRA. The bytes of those dirs all differ, so
what identifies a base is its *source*: `source_fingerprint`, a hash of the
source checkpoint's tensors computed once at convert time (values rounded to
bfloat16, so an fp32 checkpoint and its bf16 copy agree) and stored in the
converted dir's mixlora_source.json, which every conversion of one source
shares. Dirs without it (converted by older mixlora or by mlx-lm, the nano
base) fall back to `fingerprint`, the byte sample adapters have always recorded.

`identity_mismatch` compares the strongest field both sides have;
`check_same_base` refuses with a message naming both bases and what to do, or,
with `mixlora --force` (MIXLORA_FORCE_BASE=1), only warns.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

from .errors import MixloraError

FORCE_ENV = "MIXLORA_FORCE_BASE"
FINGERPRINT_CHARS = 16


def source_fingerprint(weights: dict[str, Any]) -> str:
    """sha256 over every tensor's name, shape and values rounded to bfloat16 (name order)."""
    import mlx.core as mx
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(weights):
        value = weights[name]
        h.update(f"{name}:{list(value.shape)};".encode())
        bits = np.array(value.astype(mx.bfloat16).view(mx.uint16))
        bits[bits == 0x8000] = 0  # -0.0 and 0.0 are the same weight
        h.update(bits.tobytes())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def identity_mismatch(mine: dict, base: dict) -> str | None:
    """The identity field on which two bases differ, or None when they are (as far as known) one model."""
    for key in ("source_fingerprint", "fingerprint"):
        if mine.get(key) and base.get(key):
            return None if mine[key] == base[key] else key
    return None


def describe(ident: dict) -> str:
    """`TinyLlama/x (float32, dir /a/b, source fingerprint 12ab…)`: one base, for messages."""
    parts = [ident.get("dtype") or "dtype not recorded"]
    if ident.get("model_dir"):
        parts.append(f"dir {ident['model_dir']}")
    if ident.get("source_revision"):
        parts.append(f"revision {ident['source_revision']}")
    if ident.get("source_fingerprint"):
        parts.append(f"source fingerprint {ident['source_fingerprint']}")
    else:
        parts.append(f"weights fingerprint {ident.get('fingerprint')}")
    return f"{ident.get('name_or_path', 'unknown source')} ({', '.join(parts)})"


def forced() -> bool:
    return os.environ.get(FORCE_ENV, "") not in ("", "0")


def check_same_base(mine: dict, base: dict, source: str) -> None:
    """Refuse (or, forced, warn about) an adapter whose recorded base is another model than `base`."""
    field = identity_mismatch(mine, base)
    if field is None:
        return
    where = (
        "the base it was trained on (any dtype or quantisation of that source works)"
        if field == "source_fingerprint"
        # one side has no source fingerprint (an older adapter or model dir): only bytes compare
        else "the very model dir it was trained on (without a source fingerprint on both sides "
        "only identical weights files match)"
    )
    msg = (
        f"{source}: adapter was trained on a different base model: adapter's base {describe(mine)}, "
        f"this base {describe(base)}. Load it on {where} or retrain it on this base; "
        "`mixlora --force` loads it anyway (unsafe: on another model its outputs are meaningless)"
    )
    if forced():
        print(f"warning: {msg}", file=sys.stderr, flush=True)
        return
    raise MixloraError(msg)
