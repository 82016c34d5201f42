"""Convert a Hugging Face Llama checkpoint (safetensors) into an MLX model directory.

The output is what `mlx_lm.load` and `mlx_mixlora.model.load` read: config.json
(the HF config, plus `quantization` when quantized), safetensors weights,
tokenizer files, a README model card and `mixlora_source.json` (provenance).
Tensor names of HF's LlamaForCausalLM already match mlx-lm's Llama; the work is
validation (nothing missing, nothing pickled), the config's RoPE form
(`llama_config.normalize_llama_config`), dtype casting and quantization.
mixlora_source.json records the source's dtype-independent fingerprint
(`identity.source_fingerprint`), which adapters use to recognise their base.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import MixloraError
from ..identity import source_fingerprint
from ..io import (
    PICKLE_SUFFIXES,
    atomic_dir,
    check_safetensors_header,
    output_path,
    read_json,
    write_json,
)
from ..validate import inside, model_config
from .hub import resolve_source
from .llama_config import normalize_llama_config

DTYPES = ("float32", "float16", "bfloat16")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
)


@dataclass
class ConvertOptions:
    """How to convert: target dtype ("auto" = float16 on Metal, float32 elsewhere) and quantization."""

    dtype: str = "auto"
    quantize: bool = False
    q_bits: int = 4
    q_group_size: int = 64
    revision: str | None = None
    overwrite: bool = False


def default_dtype() -> str:
    """fp16 where Metal runs it fast; fp32 on CPU, where half-precision matmul is slow."""
    import mlx.core as mx

    return "float16" if mx.metal.is_available() else "float32"


def _check_config(src: Path) -> dict:
    config = read_json(src / "config.json", what="checkpoint config")
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or (
        archs and not set(archs) & set(SUPPORTED_ARCHITECTURES)
    ):
        raise MixloraError(
            f"{src}: not a Llama checkpoint (model_type={config.get('model_type')!r}, "
            f"architectures={archs}); mixlora convert handles LlamaForCausalLM"
        )
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    ):
        if not isinstance(config.get(key), int):
            raise MixloraError(f"{src}/config.json: missing or non-integer {key!r}")
    model_config(config, f"{src}/config.json")
    return normalize_llama_config(config, str(src))


def _weight_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, what="safetensors index").get("weight_map", {})
        names = sorted(set(weight_map.values()))
        files = [inside(n, src, str(index)) for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MixloraError(f"{src}: shard files listed in the index are missing: {missing}")
        return files
    files = sorted(src.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in src.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise MixloraError(
                f"{src}: only pickle checkpoints found ({', '.join(pickles)}); refusing to unpickle them. "
                "Re-save the model with safetensors (save_pretrained(..., safe_serialization=True))"
            )
        raise MixloraError(f"{src}: no *.safetensors weights found")
    return files


def _load_weights(files: list[Path]) -> dict:
    import mlx.core as mx

    weights = {}
    for f in files:
        check_safetensors_header(f)
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:  # corrupt data surfaces as RuntimeError/ValueError from mx.load
            raise MixloraError(f"{f} could not be read: {e}") from None
    return weights


def _build_model(config: dict, weights: dict, dtype: str, src: Path):
    """mlx-lm's Llama for `config` with `weights` loaded (after a complete name/shape check).

    Returns `(model, source_fingerprint)`: the fingerprint is taken from the
    checkpoint's tensors before the cast, so every dtype and quantisation of one
    source records the same one.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    weights = model.sanitize(weights)
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        raise MixloraError(
            f"{src}: checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}"
        )
    if unexpected:
        raise MixloraError(
            f"{src}: checkpoint has {len(unexpected)} tensor(s) a Llama model does not use, e.g. {unexpected[:3]}"
        )
    for name, value in weights.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise MixloraError(
                f"{src}: tensor {name} has shape {list(value.shape)}, the config implies {list(expected[name].shape)}"
            )
    fingerprint = source_fingerprint(weights)
    target = getattr(mx, dtype)
    model.load_weights([(k, v.astype(target)) for k, v in weights.items()], strict=True)
    mx.eval(model.parameters())
    return model, fingerprint


def _model_card(source: str, config: dict, opts: ConvertOptions, dtype: str) -> str:
    import mlx_mixlora

    quant = f"{opts.q_bits}-bit, group size {opts.q_group_size}" if opts.quantize else "none"
    return (
        f"# {Path(source).name} (MLX)\n\n"
        f"Converted from `{source}` with mlx-mixlora {mlx_mixlora.__version__} (`mixlora convert`).\n\n"
        f"- architecture: Llama, {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
        f"{config['num_attention_heads']} heads / {config.get('num_key_value_heads', config['num_attention_heads'])} KV heads\n"
        f"- dtype: {dtype}\n- quantization: {quant}\n\n"
        "Load with `mlx_mixlora.model.load(path)` or `mlx_lm.load(path)`.\n"
    )


def convert_hf_to_mlx(src: str, dst: str | Path, opts: ConvertOptions | None = None) -> Path:
    """Convert `src` (local dir or hub id) into an MLX model dir at `dst`, atomically."""
    from mlx_lm.utils import quantize_model, save_config, save_model

    import mlx_mixlora

    opts = opts or ConvertOptions()
    dtype = default_dtype() if opts.dtype == "auto" else opts.dtype
    if dtype not in DTYPES:
        raise MixloraError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    output_path(dst, opts.overwrite)  # refuse before a download or a conversion, not after
    dst = Path(dst)
    local = resolve_source(src, revision=opts.revision)
    config = _check_config(local)
    weights = _load_weights(_weight_files(local))
    model, fingerprint = _build_model(config, weights, dtype, local)
    del weights
    config = dict(config)
    config["torch_dtype"] = dtype
    if opts.quantize:
        if opts.q_bits not in (2, 3, 4, 5, 6, 8):
            raise MixloraError(f"--q-bits must be one of 2,3,4,5,6,8, got {opts.q_bits}")
        if config["hidden_size"] % opts.q_group_size:
            raise MixloraError(
                f"hidden size {config['hidden_size']} is not divisible by --q-group-size {opts.q_group_size}"
            )
        model, config = quantize_model(model, config, opts.q_group_size, opts.q_bits)

    with atomic_dir(dst, overwrite=opts.overwrite) as tmp:
        save_model(tmp, model)
        save_config(config, tmp / "config.json")
        for name in TOKENIZER_FILES:
            if (local / name).is_file():
                shutil.copy2(local / name, tmp / name)
        (tmp / "README.md").write_text(_model_card(src, config, opts, dtype))
        write_json(
            tmp / "mixlora_source.json",
            {
                "source": src,
                "revision": opts.revision,
                # the hub snapshot's commit when downloaded (snapshots/<commit>), else None
                "resolved_revision": local.name if local != Path(src).expanduser() else None,
                "source_fingerprint": fingerprint,
                "dtype": dtype,
                "quantization": config.get("quantization"),
                "converted_with": f"mlx-mixlora {mlx_mixlora.__version__}",
            },
        )
    return dst


def describe(dst: str | Path) -> str:
    """One line for the CLI: what was written."""
    dst = Path(dst)
    cfg = json.loads((dst / "config.json").read_text())
    size = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    q = cfg.get("quantization")
    qs = f", {q['bits']}-bit" if q else ""
    return f"wrote {dst} ({cfg['num_hidden_layers']} layers, {size / 2**20:.1f} MiB{qs})"
