"""Build a ready `Service` from directories: the model, its adapters, and optionally a gate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import MixloraError
from ..route.gate import load_gate_router
from ..route.session import load_setup
from .app import Service
from .engine import Engine


def load_service(
    model_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    gate_dir: str | Path | None = None,
    max_batch: int = 8,
    max_queue: int = 32,
    context: int | None = None,
    default_max_tokens: int = 256,
    api_key: str | None = None,
    split_rows: int | None = None,
) -> Service:
    """Load everything (errors are `MixloraError`s) and attach the mixed-adapter layers."""
    s = load_setup(model_dir, adapter_dirs)
    base_name = Path(model_dir).resolve().name
    taken = {"auto", *s.names}
    if base_name in taken:
        raise MixloraError(f"the model directory's name {base_name!r} clashes with an adapter name")
    router, mode, threshold = None, "top1", 0.5
    if gate_dir is not None:
        router = load_gate_router(gate_dir, s.adapters, base=s.base)
        mode, threshold = router.config.mode, router.config.threshold
    limit = context or getattr(s.model.args, "max_position_embeddings", None) or 2048
    if limit < 2:
        raise MixloraError(f"--context must be >= 2, got {limit}")
    if default_max_tokens < 1:
        raise MixloraError(f"--max-tokens must be >= 1, got {default_max_tokens}")
    engine = Engine(
        s.model,
        s.tokenizer,
        s.adapters,
        router=router,
        router_mode=mode,
        threshold=threshold,
        max_batch=max_batch,
        max_queue=max_queue,
        split_rows=split_rows,
    )
    return Service(engine, base_name, limit, default_max_tokens, api_key)
