"""Load an MLX model directory (converted TinyLlama or any Llama-family dir).

mlx-lm provides the model definitions and tokenizer wrapper; this module adds
our checks (clear errors, no remote code) and a base-model identity that
adapters record so adapters for different bases are never mixed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .errors import MixloraError
from .io import PICKLE_SUFFIXES, check_safetensors_header, read_json
from .validate import has_tokenizer, model_dir_files

LLAMA_FAMILY = {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"}


def _require_model_dir(model_dir: str | Path) -> tuple[Path, dict]:
    path = Path(model_dir)
    if not path.is_dir():
        raise MixloraError(f"model directory not found: {path}")
    config = read_json(path / "config.json", what="model config")
    if config.get("model_type") not in LLAMA_FAMILY:
        raise MixloraError(
            f"{path}: model_type {config.get('model_type')!r} is not a supported Llama-family type "
            f"({', '.join(sorted(LLAMA_FAMILY))})"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES)]
        hint = (
            f" (found pickle files {pickles}: convert them with `mixlora convert`)"
            if pickles
            else ""
        )
        raise MixloraError(f"{path}: no *.safetensors weights{hint}")
    model_dir_files(path, config, weights)
    return path, config


def load_model(model_dir: str | Path, lazy: bool = False) -> tuple[Any, dict]:
    """Load the MLX model (mlx-lm's definition) and its config; no tokenizer."""
    from mlx_lm.utils import load_model as _mlx_lm_load_model

    path, _ = _require_model_dir(model_dir)
    try:
        model, config = _mlx_lm_load_model(path, lazy=lazy, trust_remote_code=False)
    except ValueError as e:  # mlx-lm raises ValueError for missing/extra tensors
        raise MixloraError(f"{path}: weights do not match the config: {e}") from None
    return model, config


def load(model_dir: str | Path, lazy: bool = False) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` from an MLX model dir; the tokenizer is mlx-lm's wrapper."""
    from mlx_lm.utils import load_tokenizer

    model, _ = load_model(model_dir, lazy=lazy)
    has_tokenizer(model_dir)
    try:
        tokenizer = load_tokenizer(Path(model_dir))
    except Exception as e:  # tokenizers raise many types; one clear line is what users need
        raise MixloraError(f"{model_dir}: could not load the tokenizer: {e}") from None
    return model, tokenizer


def base_identity(model_dir: str | Path) -> dict:
    """What an adapter records about its base: where it came from, its shapes and fingerprints.

    `source_fingerprint` (from mixlora_source.json, written at convert time) is
    the same for every dtype/quantisation of one source; `fingerprint` samples
    this dir's bytes, for dirs without one and for adapters recorded before it
    (see `identity.identity_mismatch`). `dtype` and `model_dir` are for messages.
    """
    path, config = _require_model_dir(model_dir)
    card = {}
    card_path = path / "mixlora_source.json"
    if card_path.is_file():
        card = read_json(card_path, what="model provenance")
    ident = {
        "name_or_path": card.get("source", str(path)),
        "model_type": config.get("model_type"),
        "hidden_size": config.get("hidden_size"),
        "intermediate_size": config.get("intermediate_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "num_attention_heads": config.get("num_attention_heads"),
        "num_key_value_heads": config.get("num_key_value_heads", config.get("num_attention_heads")),
        "vocab_size": config.get("vocab_size"),
        "fingerprint": weights_fingerprint(path),
        # a dir with adapters fused in (merge --into-base) keeps its base's card but is another model
        "source_fingerprint": None
        if (path / "mixlora_merge.json").is_file()
        else card.get("source_fingerprint"),
        "source_revision": card.get("resolved_revision") or card.get("revision"),
        "dtype": _dtype_label(path, config),
        "model_dir": str(path.resolve()),
    }
    return {k: v for k, v in ident.items() if v is not None}


def _dtype_label(path: Path, config: dict) -> str | None:
    """How this dir stores weights: float32, or 4-bit (group 64) float16 when quantized.

    From config.json's torch_dtype, else from the embedding's dtype in the
    safetensors header (the nano base and mlx-lm conversions may not record it).
    """
    dtype = config.get("torch_dtype") or config.get("dtype")
    if not dtype:
        stored = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
        for f in sorted(path.glob("*.safetensors")):
            info = check_safetensors_header(f).get("model.embed_tokens.weight")
            if info:
                dtype = stored.get(info.get("dtype"), info.get("dtype"))
                break
    q = config.get("quantization")
    if q:
        return f"{q.get('bits')}-bit (group {q.get('group_size')}) {dtype or ''}".strip()
    return dtype


def weights_fingerprint(model_dir: str | Path, sample_bytes: int = 1 << 20) -> str:
    """A cheap, stable identity of a model's weights.

    Hashes each safetensors header plus the first and last `sample_bytes` of
    tensor data: enough to tell two random bases of the same shape apart
    without reading gigabytes.
    """
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(sample_bytes)
            h.update(head)
            if size > 2 * sample_bytes:
                fh.seek(size - sample_bytes)
                h.update(fh.read(sample_bytes))
    return h.hexdigest()[:16]
