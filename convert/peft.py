"""MLX adapters ⇄ PEFT LoRA adapters for `LlamaForCausalLM`.

Our `P.lora_a` [r, in] / `P.lora_b` [out, r] already have PEFT's orientation, and
our scale rule (alpha/r, alpha/√r with rsLoRA, per-module rank and alpha) is
PEFT's, so export is a key rename plus a config; import validates every PEFT
feature we do not model (DoRA, LoRA bias, modules_to_save, fan_in_fan_out, ...)
and refuses it with one clear message rather than loading something different.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from ..adapter_format import (
    TARGET_PARENT,
    AdapterConfig,
    check_against_base,
    module_path,
    read_adapter,
    save_adapter,
)
from ..errors import MixloraError
from ..io import atomic_dir, check_safetensors_header, read_json, refuse_pickle, write_json
from ..model import base_identity, load_model

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
_PEFT_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight$"
)

# PEFT's LoraConfig defaults (peft 0.21) for the fields a LoRA-on-Llama adapter uses.
PEFT_DEFAULTS: dict[str, Any] = {
    "auto_mapping": None,
    "revision": None,
    "inference_mode": True,
    "exclude_modules": None,
    "lora_dropout": 0.0,
    "fan_in_fan_out": False,
    "bias": "none",
    "modules_to_save": None,
    "init_lora_weights": True,
    "layers_pattern": None,
    "megatron_config": None,
    "megatron_core": "megatron.core",
    "trainable_token_indices": None,
    "loftq_config": {},
    "use_dora": False,
    "layer_replication": None,
    "lora_bias": False,
    "target_parameters": None,
}

# PEFT features we cannot represent: (config key, value that is fine, message)
_UNSUPPORTED = [
    ("use_dora", False, "DoRA adapters (use_dora) are not supported"),
    ("bias", "none", "LoRA bias terms (bias != 'none') are not supported"),
    ("lora_bias", False, "LoRA bias terms (lora_bias) are not supported"),
    (
        "fan_in_fan_out",
        False,
        "fan_in_fan_out adapters (GPT-2 style Conv1D) are not supported for Llama",
    ),
    ("modules_to_save", None, "modules_to_save (fully trained extra modules) are not supported"),
    ("layer_replication", None, "layer_replication is not supported"),
    ("trainable_token_indices", None, "trainable_token_indices is not supported"),
    ("target_parameters", None, "target_parameters (LoRA on raw parameters) is not supported"),
]


def export_peft(
    adapter_dir: str | Path,
    out: str | Path,
    base_model_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `adapter_model.safetensors` + `adapter_config.json` that `PeftModel.from_pretrained` loads."""
    adapter = read_adapter(adapter_dir)
    cfg, weights = adapter.config, adapter.weights
    tensors = {}
    for p in adapter.module_paths():
        tensors[f"{PREFIX}{p}.lora_A.weight"] = weights[f"{p}.lora_a"].astype(mx.float32)
        tensors[f"{PREFIX}{p}.lora_B.weight"] = weights[f"{p}.lora_b"].astype(mx.float32)
    base = base_model_id or cfg.base_model.get("name_or_path")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "target_modules": sorted(cfg.targets),
        "layers_to_transform": sorted(cfg.layers),
        "use_rslora": cfg.use_rslora,
        "rank_pattern": {p: r for p, r in cfg.rank_pattern.items() if r != cfg.rank},
        "alpha_pattern": {p: a for p, a in cfg.alpha_pattern.items() if a != cfg.alpha},
        **PEFT_DEFAULTS,
        "lora_dropout": cfg.dropout,
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        mx.save_safetensors(str(tmp / PEFT_WEIGHTS), tensors, metadata={"format": "pt"})
        write_json(tmp / PEFT_CONFIG, config)
    return Path(out)


def _check_peft_config(raw: dict, source: str) -> None:
    if raw.get("peft_type") != "LORA":
        raise MixloraError(f"{source}: peft_type {raw.get('peft_type')!r} is not LORA")
    if raw.get("task_type") not in (None, "CAUSAL_LM"):
        raise MixloraError(f"{source}: task_type {raw.get('task_type')!r} is not CAUSAL_LM")
    for key, ok, message in _UNSUPPORTED:
        value = raw.get(key, ok)
        is_default = (
            value == ok or (ok is None and value in ([], {})) or (ok is False and value is None)
        )
        if not is_default:
            raise MixloraError(f"{source}: {message} (found {key}={value!r})")
    for key in ("r", "lora_alpha"):
        if not _positive(raw.get(key)):
            raise MixloraError(f"{source}: {key} must be a positive number, got {raw.get(key)!r}")
    if not isinstance(raw.get("use_rslora", False), bool):
        raise MixloraError(
            f"{source}: use_rslora must be true or false, got {raw.get('use_rslora')!r}"
        )
    dropout = raw.get("lora_dropout", 0.0) or 0.0
    if not (dropout == 0.0 or _positive(dropout)) or dropout >= 1:
        raise MixloraError(f"{source}: lora_dropout must be a number in [0, 1), got {dropout!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = raw.get(key) or {}
        if not isinstance(pattern, dict) or not all(_positive(v) for v in pattern.values()):
            raise MixloraError(
                f"{source}: {key} must map module names to positive numbers, got {pattern!r}"
            )
        for k in pattern:
            try:
                re.compile(k)
            except re.error:
                raise MixloraError(
                    f"{source}: {key} key {k!r} is not a valid module pattern"
                ) from None


def _positive(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _resolve_pattern(pattern: dict, path: str, default: float) -> float:
    """PEFT matches rank/alpha pattern keys as regexes against the module name's suffix."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def import_peft(
    peft_dir: str | Path,
    out: str | Path,
    model_dir: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a PEFT LoRA directory into our adapter format (validated, optionally against a base)."""
    peft_dir = Path(peft_dir)
    if not peft_dir.is_dir():
        raise MixloraError(f"PEFT adapter directory not found: {peft_dir}")
    raw = read_json(peft_dir / PEFT_CONFIG, what="PEFT adapter config")
    _check_peft_config(raw, str(peft_dir / PEFT_CONFIG))
    wfile = peft_dir / PEFT_WEIGHTS
    if not wfile.is_file():
        pickles = [p.name for p in peft_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        if pickles:
            refuse_pickle(peft_dir / pickles[0])
        raise MixloraError(f"{peft_dir}: missing {PEFT_WEIGHTS}")
    pairs = read_lora_pairs(wfile, _PEFT_KEY, "A", "B")
    rank, alpha = int(raw["r"]), float(raw["lora_alpha"])
    cfg, weights = assemble_adapter(
        pairs,
        rank=rank,
        alpha=alpha,
        use_rslora=bool(raw.get("use_rslora", False)),
        rank_of=lambda p: int(_resolve_pattern(raw.get("rank_pattern") or {}, p, rank)),
        alpha_of=lambda p: float(_resolve_pattern(raw.get("alpha_pattern") or {}, p, alpha)),
        source=str(wfile),
    )
    cfg.dropout = float(raw.get("lora_dropout", 0.0) or 0.0)
    cfg.base_model = {"name_or_path": raw.get("base_model_name_or_path")}
    cfg.name = name
    cfg.created_by = "mixlora import peft"
    cfg.extra = {"peft_version": raw.get("peft_version")}
    if model_dir is not None:
        check_shapes_against_base(cfg, weights, model_dir)
    return save_adapter(out, cfg, weights, overwrite=overwrite)


def read_lora_pairs(
    wfile: Path, key_re: re.Pattern, a: str, b: str
) -> dict[str, tuple[mx.array, mx.array]]:
    """{module path: (A, B)} from a safetensors file of LoRA tensors, as stored.

    `key_re` parses a tensor name into (layer, parent, target, letter); the
    letters `a`/`b` name A and B. Every tensor must be one of an adaptable Llama
    module's pair, and every module must have both.
    """
    modules: dict[str, dict[str, str]] = {}
    for key in check_safetensors_header(wfile):
        if key == "__metadata__":
            continue
        m = key_re.match(key)
        if not m or TARGET_PARENT.get(m.group(3)) != m.group(2):
            raise MixloraError(f"{wfile}: tensor {key!r} matches no adaptable Llama module")
        modules.setdefault(module_path(int(m.group(1)), m.group(3)), {})[m.group(4)] = key
    if not modules:
        raise MixloraError(f"{wfile}: no LoRA tensors found")
    incomplete = sorted(p for p, ab in modules.items() if set(ab) != {a, b})
    if incomplete:
        raise MixloraError(f"{wfile}: {incomplete[0]} has only one of lora_{a} / lora_{b}")
    try:
        tensors = mx.load(str(wfile))
    except Exception as e:  # corrupt data surfaces from mx.load as RuntimeError/ValueError
        raise MixloraError(f"{wfile} could not be read: {e}") from None
    return {p: (tensors[ab[a]], tensors[ab[b]]) for p, ab in modules.items()}


def assemble_adapter(
    pairs: dict, rank: int, alpha: float, use_rslora: bool, rank_of, alpha_of, source: str
):
    """Build (AdapterConfig, weights) from {module path: (A [r,in], B [out,r])}, checking grid and ranks."""
    layers = sorted({int(p.split(".")[2]) for p in pairs})
    targets = sorted({p.rsplit(".", 1)[1] for p in pairs}, key=list(TARGET_PARENT).index)
    grid = {module_path(i, t) for i in layers for t in targets}
    if grid != set(pairs):
        missing = sorted(grid - set(pairs))
        raise MixloraError(
            f"{source}: adapted modules do not form a layers × targets grid (e.g. {missing[0]} is not adapted); "
            "this adapter cannot be represented"
        )
    weights, rank_pattern, alpha_pattern = {}, {}, {}
    for p in sorted(grid):
        a, b = (t.astype(mx.float32) for t in pairs[p])
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise MixloraError(
                f"{source}: {p} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, which do not chain"
            )
        r_p, want_r = int(a.shape[0]), rank_of(p)
        if r_p != want_r:
            raise MixloraError(f"{source}: {p} has rank {r_p} but the config says {want_r}")
        if r_p != rank:
            rank_pattern[p] = r_p
        if alpha_of(p) != alpha:
            alpha_pattern[p] = alpha_of(p)
        weights[f"{p}.lora_a"], weights[f"{p}.lora_b"] = a, b
    cfg = AdapterConfig(
        rank=rank,
        alpha=alpha,
        targets=targets,
        layers=layers,
        use_rslora=use_rslora,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    return cfg, weights


def check_shapes_against_base(cfg: AdapterConfig, weights: dict, model_dir: str | Path) -> None:
    """Every A must match the base layer's input size and every B its output size."""
    ident = base_identity(model_dir)
    check_against_base(
        cfg, weights, {k: v for k, v in ident.items() if k != "fingerprint"}, str(model_dir)
    )
    model, _ = load_model(model_dir, lazy=True)
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    per_word = 32 // shapes_bits(model_dir)  # values per packed uint32 column when quantized
    for p in cfg.module_paths():
        w = shapes.get(f"{p}.weight")
        if w is None:
            raise MixloraError(f"{model_dir}: base model has no module {p}")
        out_dim = w[0]
        in_dim = w[1] * per_word if f"{p}.scales" in shapes else w[1]
        a, b = weights[f"{p}.lora_a"].shape, weights[f"{p}.lora_b"].shape
        if a[1] != in_dim or b[0] != out_dim:
            raise MixloraError(
                f"{p}: adapter shapes lora_A {list(a)} / lora_B {list(b)} do not fit the base weight [{out_dim}, {in_dim}]"
            )
    cfg.base_model = ident


def shapes_bits(model_dir: str | Path) -> int:
    """Bits per weight of a quantized MLX model dir (packed uint32 columns hold 32/bits values)."""
    q = read_json(Path(model_dir) / "config.json").get("quantization") or {}
    return int(q.get("bits", 32))
