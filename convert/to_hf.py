"""Export an MLX model dir, optionally with an adapter fused in, as a Transformers checkpoint.

For users who want no PEFT at all: the result loads with
`AutoModelForCausalLM.from_pretrained`. The adapter's s·B·A is fused into each
adapted weight by `fuse.fused_weight` (one addmm in float32, cast back);
quantized bases are dequantized.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx

from ..adapter_format import read_adapter
from ..errors import MixloraError
from ..fuse import check_update_shape, fused_weight
from ..io import atomic_dir, write_json
from ..model import _require_model_dir, base_identity
from .hf_to_mlx import TOKENIZER_FILES
from .llama_config import normalize_llama_config


def _dequantize(weights: dict, config: dict) -> dict:
    q = config.get("quantization")
    if not q:
        return weights
    out = {}
    for key, value in weights.items():
        if key.endswith((".scales", ".biases")):
            continue
        prefix = key[: -len(".weight")] if key.endswith(".weight") else None
        if prefix and f"{prefix}.scales" in weights:
            value = mx.dequantize(
                value,
                weights[f"{prefix}.scales"],
                weights.get(f"{prefix}.biases"),
                q["group_size"],
                q["bits"],
            )
        out[key] = value
    return out


def export_hf(
    model_dir: str | Path,
    out: str | Path,
    adapter_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write config.json + model.safetensors + tokenizer files for transformers.

    A Llama config is written in transformers 4.x's form (top-level rope_theta and
    rope_scaling with both `type` and `rope_type`), which 4.x and 5.x read alike.
    """
    model_dir, config = _require_model_dir(model_dir)
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(mx.load(str(f)))
    weights = _dequantize(weights, config)
    dtype = next(v.dtype for k, v in weights.items() if k.endswith("embed_tokens.weight"))
    if adapter_dir is not None:
        adapter = read_adapter(adapter_dir, base=base_identity(model_dir))
        for p in adapter.module_paths():
            key = f"{p}.weight"
            if key not in weights:
                raise MixloraError(f"{model_dir}: base model has no weight {key}")
            upd = adapter.factors(p)
            check_update_shape(weights[key].shape, upd, p)
            weights[key] = fused_weight(weights[key], upd)
    tied = config.get("tie_word_embeddings", True)  # mlx-lm's default, unlike transformers'
    if tied:
        weights.pop("lm_head.weight", None)
    hf_config = {
        k: v for k, v in config.items() if k not in ("quantization", "quantization_config")
    }
    hf_config["tie_word_embeddings"] = tied
    hf_config.pop("dtype", None)
    hf_config["torch_dtype"] = str(dtype).split(".")[-1]
    hf_config.setdefault("architectures", ["LlamaForCausalLM"])
    # dirs converted before RoPE forms were normalised may still hold 5.x's rope_parameters
    if hf_config.get("model_type") == "llama":
        hf_config = normalize_llama_config(hf_config, str(model_dir))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config)
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
    return Path(out)
