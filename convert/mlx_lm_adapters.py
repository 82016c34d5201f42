"""Import mlx-lm LoRA adapter directories into our adapter format.

mlx-lm stores `lora_a` as [in, r] and `lora_b` as [r, out] and multiplies by a
plain `scale`; ours (PEFT's orientation) is A [r, in], B [out, r] with
s = alpha/r, so import transposes and sets alpha = scale·r.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..adapter_format import save_adapter
from ..errors import MixloraError
from ..io import read_json
from ..validate import number
from .peft import assemble_adapter, check_shapes_against_base, read_lora_pairs

_KEY = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_([ab])$")


def import_mlx_lm(
    adapter_dir: str | Path,
    out: str | Path,
    model_dir: str | Path | None = None,
    name: str | None = None,
    overwrite=False,
) -> Path:
    """Convert an mlx-lm `lora` adapter dir (adapters.safetensors + adapter_config.json)."""
    adapter_dir = Path(adapter_dir)
    raw = read_json(adapter_dir / "adapter_config.json", what="mlx-lm adapter config")
    kind = raw.get("fine_tune_type", "lora")
    if kind != "lora":
        raise MixloraError(
            f"{adapter_dir}: mlx-lm fine_tune_type {kind!r} is not supported (only 'lora')"
        )
    params = raw.get("lora_parameters")
    if not isinstance(params, dict) or not isinstance(params.get("scale"), int | float):
        raise MixloraError(f"{adapter_dir}: lora_parameters.scale is missing")
    number(f"{adapter_dir}: lora_parameters.scale", params["scale"], lo=0, lo_open=True)
    wfile = adapter_dir / "adapters.safetensors"
    if not wfile.is_file():
        raise MixloraError(f"{adapter_dir}: missing adapters.safetensors")
    pairs = {p: (a.T, b.T) for p, (a, b) in read_lora_pairs(wfile, _KEY, "a", "b").items()}
    rank = int(next(iter(pairs.values()))[0].shape[0])
    alpha = float(params["scale"]) * rank
    cfg, weights = assemble_adapter(
        pairs,
        rank=rank,
        alpha=alpha,
        use_rslora=False,
        rank_of=lambda p: rank,
        alpha_of=lambda p: alpha,
        source=str(wfile),
    )
    cfg.dropout = float(params.get("dropout", 0.0) or 0.0)
    cfg.name = name
    cfg.created_by = "mixlora import mlx-lm"
    if model_dir is not None:
        check_shapes_against_base(cfg, weights, model_dir)
    return save_adapter(out, cfg, weights, overwrite=overwrite)
