"""Our adapters → mlx-lm adapter directories (`mlx_lm.load(base, adapter_path=...)`).

mlx-lm (`tuner/utils.py`: `load_adapters`, `linear_to_lora_layers`) reads
`adapter_config.json` with `fine_tune_type`, `num_layers` (LoRA on the *last*
that many decoder layers), and `lora_parameters` {rank, scale, dropout, keys}:
one rank and one plain scale for every module, `keys` the module paths inside a
layer ("self_attn.q_proj"). Its weights are `model.layers.i.<key>.lora_a` [in, r]
and `.lora_b` [r, out], computing y + scale·(x·lora_a)·lora_b, so export
transposes our A [r, in] / B [out, r] and writes scale = alpha/r (alpha/√r with
rsLoRA). The inverse of `mlx_lm_adapters.import_mlx_lm`.

An adapter mlx-lm cannot express (layers that are not the base's last ones,
per-module ranks or alphas) is refused with one line naming the reason.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from ..adapter_format import TARGET_PARENT, AdapterConfig, read_adapter
from ..errors import MixloraError
from ..io import atomic_dir, write_json

MLX_LM_CONFIG = "adapter_config.json"
MLX_LM_WEIGHTS = "adapters.safetensors"


def mlx_lm_config(cfg: AdapterConfig, source: str) -> dict:
    """mlx-lm's adapter_config.json for `cfg`, or one error saying what mlx-lm cannot express."""
    paths = cfg.module_paths()
    ranks = {cfg.rank_of(p) for p in paths}
    scales = {cfg.scale_of(p) for p in paths}
    if len(ranks) > 1:
        raise MixloraError(
            f"{source}: mlx-lm adapters have one rank for every module; this one has ranks "
            f"{sorted(ranks)} (rank_pattern)"
        )
    if len(scales) > 1:
        raise MixloraError(
            f"{source}: mlx-lm adapters have one scale for every module; this one has "
            f"{len(scales)} (alpha_pattern)"
        )
    n = cfg.base_model.get("num_hidden_layers")
    if not isinstance(n, int) or n < 1:
        raise MixloraError(
            f"{source}: the adapter does not record its base's layer count (imported without "
            "--model?), so mlx-lm's num_layers (the last N layers) cannot be set; re-import it with --model"
        )
    layers = sorted(cfg.layers)
    if layers != list(range(n - len(layers), n)):
        raise MixloraError(
            f"{source}: mlx-lm puts LoRA on the last N of the base's {n} layers; this adapter "
            f"has layers {_span(layers)}"
        )
    config = {
        "fine_tune_type": "lora",
        "num_layers": len(layers),
        "lora_parameters": {
            "rank": ranks.pop(),
            "scale": scales.pop(),
            "dropout": cfg.dropout,
            "keys": [f"{TARGET_PARENT[t]}.{t}" for t in cfg.targets],
        },
    }
    if cfg.base_model.get("name_or_path"):
        config["model"] = cfg.base_model["name_or_path"]
    return config


def _span(layers: list[int]) -> str:
    return str(layers) if len(layers) <= 8 else f"{layers[:4]} ... ({len(layers)} layers)"


def export_mlx_lm(adapter_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write `adapters.safetensors` + `adapter_config.json` that mlx-lm's `--adapter-path` loads."""
    adapter = read_adapter(adapter_dir)
    config = mlx_lm_config(adapter.config, str(adapter_dir))
    tensors = {}
    for p in adapter.module_paths():
        tensors[f"{p}.lora_a"] = adapter.weights[f"{p}.lora_a"].T
        tensors[f"{p}.lora_b"] = adapter.weights[f"{p}.lora_b"].T
    with atomic_dir(out, overwrite=overwrite) as tmp:
        mx.save_safetensors(str(tmp / MLX_LM_WEIGHTS), tensors)
        write_json(tmp / MLX_LM_CONFIG, config, atomic=False)
    return Path(out)
