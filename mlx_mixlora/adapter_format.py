"""The adapter directory format shared by train, merge, route, import and export.

An adapter directory holds two files:

- ``adapter_config.json`` — ``AdapterConfig`` below (rank, alpha, targets, layers,
  per-module rank/alpha overrides, and the base model's identity);
- ``adapters.safetensors`` — for every adapted module path ``P`` (mlx-lm's
  parameter path, e.g. ``model.layers.3.self_attn.q_proj``) two fp32 tensors:
  ``P.lora_a`` of shape ``[r, in]`` and ``P.lora_b`` of shape ``[out, r]``.

The adapted layer computes ``y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ`` with ``s = alpha/r``
(``alpha/√r`` with rsLoRA), so ``ΔW = s·B·A`` has the base weight's ``[out, in]``
shape. The orientation matches PEFT's ``lora_A``/``lora_B`` so export is a rename.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MixloraError
from .identity import check_same_base
from .io import atomic_dir, check_safetensors_header, read_json, write_json
from .validate import adapter_dims, finite_tensors, mapping, required_keys

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
FORMAT = "mlx-mixlora/adapter"
FORMAT_VERSION = 1

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
TARGET_PARENT = {**{t: "self_attn" for t in ATTENTION_TARGETS}, **{t: "mlp" for t in MLP_TARGETS}}

_MODULE_RE = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def module_path(layer: int, target: str) -> str:
    """mlx-lm parameter path of `target` (e.g. "q_proj") in decoder layer `layer`."""
    if target not in TARGET_PARENT:
        raise MixloraError(f"unknown target module {target!r}; known: {', '.join(TARGET_PARENT)}")
    return f"model.layers.{layer}.{TARGET_PARENT[target]}.{target}"


def parse_module_path(path: str) -> tuple[int, str]:
    """Inverse of `module_path`: (layer index, target short name)."""
    m = _MODULE_RE.match(path)
    if not m or m.group(3) not in TARGET_PARENT or TARGET_PARENT[m.group(3)] != m.group(2):
        raise MixloraError(f"{path!r} is not an adaptable Llama module path")
    return int(m.group(1)), m.group(3)


def validate_name(name: str, what: str = "adapter name") -> str:
    """Names become file and dict keys: no path separators, no `..`, short and plain."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise MixloraError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '-' or '.', not starting with '.' and without '..'"
        )
    return name


@dataclass
class AdapterConfig:
    """What an adapter is; see the module docstring for the weights' layout."""

    rank: int
    alpha: float
    targets: list[str]
    layers: list[int]
    use_rslora: bool = False
    dropout: float = 0.0
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    base_model: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    task: str | None = None
    created_by: str = "mixlora"
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def module_paths(self) -> list[str]:
        return [module_path(layer, t) for layer in self.layers for t in self.targets]

    def rank_of(self, path: str) -> int:
        return int(self.rank_pattern.get(path, self.rank))

    def alpha_of(self, path: str) -> float:
        return float(self.alpha_pattern.get(path, self.alpha))

    def scale_of(self, path: str) -> float:
        """LoRA scale s for one module: alpha/r, or alpha/√r with rsLoRA."""
        r = self.rank_of(path)
        a = self.alpha_of(path)
        return a / math.sqrt(r) if self.use_rslora else a / r

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "adapter config") -> AdapterConfig:
        mapping(d, source, (f.name for f in dataclasses.fields(cls)))
        if d.get("format", FORMAT) != FORMAT:
            raise MixloraError(f"{source}: format {d.get('format')!r} is not {FORMAT!r}")
        version = d.get("format_version", FORMAT_VERSION)
        if not _is_int(version) or version > FORMAT_VERSION:
            raise MixloraError(
                f"{source}: format_version {version!r} is not supported (this mixlora reads up to {FORMAT_VERSION})"
            )
        # after the format checks: a newer format may name its keys differently
        required_keys(d, source, ("rank", "alpha", "targets", "layers"))
        _expect(
            source, "rank", d["rank"], _is_int(d["rank"]) and d["rank"] >= 1, "a positive integer"
        )
        _expect(
            source,
            "alpha",
            d["alpha"],
            _is_number(d["alpha"]) and d["alpha"] > 0,
            "a positive number",
        )
        _expect(
            source,
            "targets",
            d["targets"],
            _is_list_of(d["targets"], str) and d["targets"],
            "a non-empty list of module names",
        )
        _expect(
            source,
            "layers",
            d["layers"],
            _is_list_of(d["layers"], int) and d["layers"] and min(d["layers"]) >= 0,
            "a non-empty list of layer indices",
        )
        _expect(
            source,
            "use_rslora",
            d.get("use_rslora", False),
            isinstance(d.get("use_rslora", False), bool),
            "true or false",
        )
        dropout = d.get("dropout", 0.0)
        _expect(
            source,
            "dropout",
            dropout,
            _is_number(dropout) and 0 <= dropout < 1,
            "a number in [0, 1)",
        )
        for key, check in (("rank_pattern", _is_int), ("alpha_pattern", _is_number)):
            pattern = d.get(key, {})
            ok = isinstance(pattern, dict) and all(check(v) and v > 0 for v in pattern.values())
            _expect(source, key, pattern, ok, "an object of module path -> positive number")
        for key in ("base_model", "extra"):
            _expect(source, key, d.get(key, {}), isinstance(d.get(key, {}), dict), "an object")
        for key in ("name", "task"):
            _expect(
                source,
                key,
                d.get(key),
                d.get(key) is None or isinstance(d.get(key), str),
                "a string",
            )
        _expect(
            source,
            "created_by",
            d.get("created_by", ""),
            isinstance(d.get("created_by", ""), str),
            "a string",
        )
        for t in d["targets"]:
            if t not in TARGET_PARENT:
                raise MixloraError(
                    f"{source}: unknown target module {t!r}; known: {', '.join(TARGET_PARENT)}"
                )
        cfg = cls(**d)
        cfg.alpha = float(cfg.alpha)
        cfg.dropout = float(cfg.dropout)
        cfg.alpha_pattern = {k: float(v) for k, v in cfg.alpha_pattern.items()}
        if cfg.name is not None:
            validate_name(cfg.name)
        for p in list(cfg.rank_pattern) + list(cfg.alpha_pattern):
            parse_module_path(p)
        return cfg


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _is_list_of(v: Any, kind: type) -> bool:
    return isinstance(v, list) and all(
        _is_int(x) if kind is int else isinstance(x, kind) for x in v
    )


def _expect(source: str, key: str, value: Any, ok: Any, what: str) -> None:
    if not ok:
        raise MixloraError(f"{source}: {key} must be {what}, got {value!r}")


def save_adapter(
    out_dir: str | Path,
    config: AdapterConfig,
    weights: dict[str, Any],
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write an adapter directory atomically. `weights` maps "P.lora_a"/"P.lora_b" to arrays.

    `extra_files` (name → text, e.g. the training record) land in the same atomic
    write, so the directory appears with them or not at all.
    """
    import mlx.core as mx

    check_weights(config, {k: tuple(v.shape) for k, v in weights.items()}, source=str(out_dir))
    AdapterConfig.from_dict(
        config.to_dict(), source=f"{out_dir}: adapter config"
    )  # never write what we refuse to read
    arrays = {k: mx.array(v) if not isinstance(v, mx.array) else v for k, v in weights.items()}
    finite_tensors(arrays, source=str(out_dir))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        mx.save_safetensors(str(tmp / WEIGHTS_FILE), arrays, metadata={"format": FORMAT})
        # no temp file + fsync of its own: the directory's rename publishes it
        write_json(tmp / CONFIG_FILE, config.to_dict(), atomic=False)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out_dir)


def load_adapter(adapter_dir: str | Path) -> tuple[AdapterConfig, dict[str, Any]]:
    """Read and validate an adapter directory: (config, {"P.lora_a": mx.array, ...})."""
    import mlx.core as mx

    path = Path(adapter_dir)
    if not path.is_dir():
        raise MixloraError(f"adapter directory not found: {path}")
    config = AdapterConfig.from_dict(
        read_json(path / CONFIG_FILE, what="adapter config"), source=str(path / CONFIG_FILE)
    )
    wfile = path / WEIGHTS_FILE
    if not wfile.is_file():
        raise MixloraError(f"{path}: missing {WEIGHTS_FILE}")
    header = check_safetensors_header(wfile)
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    check_weights(config, shapes, source=str(wfile))
    adapter_dims(config, shapes, source=str(wfile))
    try:
        weights = mx.load(str(wfile))
    except Exception as e:  # mx.load raises RuntimeError/ValueError on corrupt data
        raise MixloraError(f"{wfile} could not be read: {e}") from None
    finite_tensors(weights, source=str(wfile))
    return config, weights


def check_weights(config: AdapterConfig, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Every configured module has A [r,in] and B [out,r] with r from the config; nothing extra."""
    expected = set()
    for p in config.module_paths():
        expected.update((f"{p}.lora_a", f"{p}.lora_b"))
    missing = sorted(expected - set(shapes))
    extra = sorted(set(shapes) - expected)
    if missing:
        raise MixloraError(f"{source}: missing tensors for configured modules, e.g. {missing[:3]}")
    if extra:
        raise MixloraError(
            f"{source}: tensors for modules the config does not list, e.g. {extra[:3]}"
        )
    for p in config.module_paths():
        a, b = shapes[f"{p}.lora_a"], shapes[f"{p}.lora_b"]
        r = config.rank_of(p)
        if len(a) != 2 or len(b) != 2 or a[0] != r or b[1] != r:
            raise MixloraError(
                f"{source}: {p} has lora_a {list(a)} and lora_b {list(b)}, but the config says rank {r}"
            )


def check_against_base(
    config: AdapterConfig, weights: dict[str, Any], base: dict[str, Any], source: str
) -> None:
    """Refuse an adapter made for another base (identity from `model.base_identity`)."""
    mine = config.base_model
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "num_key_value_heads"):
        if mine.get(key) is not None and base.get(key) is not None and mine[key] != base[key]:
            raise MixloraError(
                f"{source}: adapter was made for a base with {key}={mine[key]}, this base has {base[key]}"
            )
    n_layers = base.get("num_hidden_layers")
    if n_layers is not None and max(config.layers) >= n_layers:
        raise MixloraError(
            f"{source}: adapter uses layer {max(config.layers)} but the base has {n_layers} layers"
        )
    check_same_base(mine, base, source)


@dataclass
class Adapter:
    """One loaded adapter — config and factors — plus the identity a saved gate or merge records.

    What merge, route, export and the trainer pass around; `factors` is the one
    place the LoRA scale is applied to B.
    """

    config: AdapterConfig
    weights: dict[str, Any]  # "P.lora_a" [r, in], "P.lora_b" [out, r] (mx.array)
    name: str = ""
    path: str = ""
    digest: str = ""

    def module_paths(self) -> list[str]:
        return self.config.module_paths()

    def factors(self, path: str, weight: float = 1.0, on: str = "b") -> tuple[Any, Any]:
        """(w·s·B, A) for one module, so that w·ΔW = B'·A.

        `on="a"` puts w·s on A instead — (B, w·s·A), PEFT's layout for `cat`,
        which merge keeps so that a merged A is PEFT's A bit for bit.
        """
        s = weight * self.config.scale_of(path)
        b, a = self.weights[f"{path}.lora_b"], self.weights[f"{path}.lora_a"]
        return (b, a * s) if on == "a" else (s * b, a)

    @property
    def task(self) -> str | None:
        return self.config.task

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "task": self.task, "digest": self.digest}


def file_digest(path: str | Path) -> str:
    """Short sha256 of a file: ties a saved gate or report to the exact weights it used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_adapter(adapter_dir: str | Path, base: dict | None = None) -> Adapter:
    """`load_adapter` as an `Adapter`; with `base` (a base identity) refuses another base's adapter."""
    config, weights = load_adapter(adapter_dir)
    if base:
        check_against_base(config, weights, base, source=str(adapter_dir))
    name = config.name or Path(adapter_dir).resolve().name
    digest = file_digest(Path(adapter_dir) / WEIGHTS_FILE)
    return Adapter(config, weights, name, str(adapter_dir), digest)


def load_adapters(paths: list[str | Path], base: dict | None = None) -> list[Adapter]:
    """Read adapter dirs, refuse ones made for another base, and refuse duplicate names."""
    if not paths:
        raise MixloraError("no adapters given: pass at least one adapter directory")
    out = [read_adapter(p, base) for p in paths]
    names = [a.name for a in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MixloraError(f"two adapters share the name {dup[0]!r}; rename one (config 'name')")
    return out


def adapter_index(adapters: list[Adapter], ref: str) -> int:
    """Index of an adapter by name, else by task."""
    for i, a in enumerate(adapters):
        if ref == a.name:
            return i
    for i, a in enumerate(adapters):
        if ref == a.task:
            return i
    raise MixloraError(f"no adapter named {ref!r}; have {', '.join(a.name for a in adapters)}")
