"""One place for the checks on untrusted numbers and files.

Commands and loaders call these before any math or any open: a NaN option, a
NaN tensor, a config field transformers would refuse, a path in an index file
that leaves its checkpoint, or a FIFO where a weights file should be all end
in one `MixloraError` that names the thing, instead of a NaN output, a
traceback or a hang.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from .errors import MixloraError

MAX_SEED = 2**32 - 1  # numpy's seed range; MLX takes any uint64 but we seed both
MAX_VOCAB = 10_000_000  # far above any real tokenizer, far below an allocation that kills the box
MAX_DIM = 1 << 20
MAX_JSON_DEPTH = 64


def number(
    name: str,
    value: float | None,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float | None:
    """A finite option value within [lo, hi] (open ends when asked); None passes (= default)."""
    if value is None:
        return None
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if not bad and lo is not None:
        bad = value <= lo if lo_open else value < lo
    if not bad and hi is not None:
        bad = value >= hi if hi_open else value > hi
    if bad:
        raise MixloraError(f"{name} must be {_range_text(lo, hi, lo_open, hi_open)}, got {value!r}")
    return value


def _range_text(lo, hi, lo_open, hi_open) -> str:
    if lo is None and hi is None:
        return "a finite number"
    if hi is None:
        return f"a finite number {'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"a finite number {'<' if hi_open else '<='} {hi:g}"
    return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def integer(
    name: str, value: int | None, lo: int | None = None, hi: int | None = None
) -> int | None:
    """An integer option within [lo, hi]; None passes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MixloraError(f"{name} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"in {lo}..{hi}" if lo is not None else f"<= {hi}"
        raise MixloraError(f"{name} must be an integer {span}, got {value}")
    return value


def seed(value: int | None, name: str = "--seed") -> int | None:
    """Seeds feed both numpy (< 2**32) and MLX: refuse what either would reject."""
    return integer(name, value, 0, MAX_SEED)


class Number(click.ParamType):
    """A click option type: a finite float in a range, refused at parse time in one line."""

    name = "number"

    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False):
        self.bounds = dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)

    def convert(self, value, param, ctx):
        try:
            value = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            return number("value", value, **self.bounds)
        except MixloraError as e:
            self.fail(str(e).removeprefix("value "), param, ctx)


FINITE = Number()
POSITIVE = Number(lo=0, lo_open=True)
NON_NEGATIVE = Number(lo=0)
FRACTION = Number(lo=0, hi=1)  # probabilities, thresholds
SEED = click.IntRange(0, MAX_SEED)
COUNT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)


def mapping(
    d: Any, source: str, known: Iterable[str], required: Iterable[str] = ()
) -> Mapping[str, Any]:
    """A parsed config or recipe: a mapping with only `known` keys and every `required` one."""
    if not isinstance(d, Mapping):
        raise MixloraError(f"{source}: must be a mapping")
    known = set(known)
    unknown = sorted(str(k) for k in set(d) - known)
    if unknown:
        raise MixloraError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
    return required_keys(d, source, required)


def required_keys(d: Mapping[str, Any], source: str, keys: Iterable[str]) -> Mapping[str, Any]:
    """Every one of `keys` is in `d`."""
    for key in keys:
        if key not in d:
            raise MixloraError(f"{source}: missing key {key!r}")
    return d


def field_types(cls: type, values: Mapping[str, Any], source: str) -> None:
    """Values for a dataclass's fields must have its defaults' types (bool, int, float, str)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in values.items():
        default = defaults.get(key, dataclasses.MISSING)
        if value is None or default is None or default is dataclasses.MISSING:
            continue
        if isinstance(default, bool):
            ok, what = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            what = "a number"
        elif isinstance(default, str):
            ok, what = isinstance(value, str | int | list), "a string"
        else:
            continue
        if not ok:
            raise MixloraError(f"{source}: {key} must be {what}, got {value!r}")


def gate_fields(d: Mapping[str, Any], source: str) -> None:
    """A saved gate's numbers before a GateMLP is built from them."""
    fields = (
        ("layer", 0),
        ("hidden_size", 1),
        ("gate_hidden", 1),
        ("top_k", 1),
        ("format_version", 0),
    )
    for key, lo in fields:
        if key in d:
            integer(f"{source}: {key}", d[key] if d[key] is not None else "null", lo, MAX_DIM)
    if "threshold" in d:
        number(
            f"{source}: threshold",
            d["threshold"] if d["threshold"] is not None else "null",
            lo=0,
            hi=1,
        )
    adapters = d.get("adapters", [])
    if not isinstance(adapters, list) or not all(isinstance(a, dict) for a in adapters):
        raise MixloraError(f"{source}: adapters must be a list of objects")
    for key in ("base_model", "train"):
        if not isinstance(d.get(key, {}), dict):
            raise MixloraError(f"{source}: {key} must be an object")
    for key in ("mode", "format"):
        if key in d and not isinstance(d[key], str):
            raise MixloraError(f"{source}: {key} must be a string")


def finite_tensors(arrays: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """Refuse NaN/inf anywhere in `arrays`, naming the first bad tensor; returns `arrays`."""
    import mlx.core as mx

    for name, a in arrays.items():
        if isinstance(a, tuple | list):  # factored updates (B, A)
            finite_tensors({f"{name}[{i}]": x for i, x in enumerate(a)}, source)
            continue
        if not isinstance(a, mx.array) or not mx.issubdtype(a.dtype, mx.inexact):
            continue
        if not bool(mx.all(mx.isfinite(a)).item()):
            raise MixloraError(f"{source}: tensor {name} holds NaN or infinite values")
    return arrays


LLAMA_INT_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)


def model_config(config: Mapping[str, Any], source: str) -> None:
    """The fields a Llama model is built from: present, integers, in range, consistent.

    What transformers or mlx-lm would refuse (or crash on, or allocate without
    bound for) is refused here in one line.
    """
    for key in LLAMA_INT_FIELDS:
        value = config.get(key)
        if value is None:
            raise MixloraError(f"{source}: missing {key!r}")
        hi = MAX_VOCAB if key == "vocab_size" else MAX_DIM
        integer(f"{source}: {key}", value, 2 if key == "vocab_size" else 1, hi)
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads")
    if kv is not None:
        integer(f"{source}: num_key_value_heads", kv, 1, heads)
        if heads % kv:
            raise MixloraError(
                f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
            )
    head_dim = config.get("head_dim")
    if head_dim is not None:
        integer(f"{source}: head_dim", head_dim, 1, MAX_DIM)
    elif config["hidden_size"] % heads:
        raise MixloraError(
            f"{source}: hidden_size {config['hidden_size']} is not divisible by num_attention_heads {heads}"
        )
    for key in ("rms_norm_eps", "rope_theta"):
        if config.get(key) is not None:
            number(f"{source}: {key}", config[key], lo=0, lo_open=True)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def model_dir_files(path: Path, config: Mapping[str, Any], weights: Iterable[Path]) -> None:
    """An MLX model dir before anything is built from it: a sane config and whole weight files."""
    from .io import check_safetensors_header

    model_config(config, f"{path}/config.json")
    for f in weights:
        check_safetensors_header(f)


def has_tokenizer(path: str | Path) -> None:
    """Say in one line that a model dir has no tokenizer (the tokenizers' own error is 5 lines)."""
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise MixloraError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")


def regular_file(path: str | Path, what: str = "file") -> Path:
    """Only regular files are opened: a FIFO or device would block or never end."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise MixloraError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MixloraError(f"{what} {path} is not a regular file")
    return path


def inside(path: str | Path, root: str | Path, what: str) -> Path:
    """`root/path` must resolve inside `root` (no `..`, no absolute path, no link out)."""
    if not isinstance(path, str | Path):
        raise MixloraError(f"{what}: {path!r} is not a file name")
    root = Path(root).resolve()
    target = (root / path).resolve()
    if Path(path).is_absolute() or (target != root and root not in target.parents):
        raise MixloraError(f"{what}: {str(path)!r} points outside {root}")
    return target


def json_depth(obj: Any, source: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` (deeper recursion crashes later code)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            raise MixloraError(f"{source}: nested deeper than {limit} levels")
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)


def loads_json(text: str, source: str) -> Any:
    """json.loads with deep nesting (RecursionError) turned into one clear error."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise MixloraError(f"{source}: JSON nested too deeply") from None
    json_depth(obj, source)
    return obj


def text(value: str, name: str) -> str:
    """Text must be encodable UTF-8: a lone surrogate breaks tokenizers and file writes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MixloraError(
            f"{name} is not valid Unicode text ({e.reason} at character {e.start})"
        ) from None
    return value


def texts(values: Iterable[Any], name: str) -> None:
    """`text` over every string inside nested lists/dicts (rows of JSON data)."""
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            text(v, name)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _module_sizes(base: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """(in, out) features of each adaptable Llama module, from a base identity or config."""
    hidden, inter = base.get("hidden_size"), base.get("intermediate_size")
    heads = base.get("num_attention_heads")
    kv = base.get("num_key_value_heads", heads)
    head_dim = base.get("head_dim") or (
        hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None
    )
    kv_out = head_dim * kv if isinstance(head_dim, int) and isinstance(kv, int) else None
    q_out = head_dim * heads if isinstance(head_dim, int) and isinstance(heads, int) else None
    return {
        "q_proj": (hidden, q_out),
        "k_proj": (hidden, kv_out),
        "v_proj": (hidden, kv_out),
        "o_proj": (q_out, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


CHARS_PER_TOKEN_BOUND = 64
"""No tokenizer we know of emits tokens longer than this many characters on average."""


def clip_example(ex: dict, max_seq_len: int) -> dict:
    """Cut an example's text to what `max_seq_len` tokens can hold before tokenizing.

    A 10 MB row at `--max-seq-len 32` otherwise tokenizes all 10 MB (gigabytes,
    seconds) to keep 32 tokens. Only text beyond `max_seq_len * 64` characters
    is cut, and from the side the over-long policy drops anyway: the end of a
    text or completion, the start of a prompt. Shorter rows come back as is.
    """
    limit = max_seq_len * CHARS_PER_TOKEN_BOUND

    def head(s):
        return s[:limit] if isinstance(s, str) and len(s) > limit else s

    def tail(s):
        return s[-limit:] if isinstance(s, str) and len(s) > limit else s

    if "messages" in ex and isinstance(ex["messages"], list):
        msgs = ex["messages"]
        clipped = [{**m, "content": tail(m.get("content"))} for m in msgs[:-1]]
        clipped.append({**msgs[-1], "content": head(msgs[-1].get("content"))})
        return {**ex, "messages": clipped}
    if "prompt" in ex:
        return {**ex, "prompt": tail(ex["prompt"]), "completion": head(ex.get("completion"))}
    if "text" in ex:
        return {**ex, "text": head(ex["text"])}
    return ex


def adapter_dims(config: Any, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """LoRA shapes against the base the adapter records: A [r, in] and B [out, r] must fit."""
    base = config.base_model or {}
    sizes = _module_sizes(base)
    recorded = ", ".join(f"{k}={base.get(k)}" for k in ("hidden_size", "intermediate_size"))
    for p in config.module_paths():
        fan_in, fan_out = sizes[p.rsplit(".", 1)[1]]
        a, b = shapes.get(f"{p}.lora_a"), shapes.get(f"{p}.lora_b")
        for key, shape, want, side in (
            (p + ".lora_a", a, fan_in, "input"),
            (p + ".lora_b", b, fan_out, "output"),
        ):
            got = None if shape is None else (shape[-1] if side == "input" else shape[0])
            if isinstance(want, int) and got is not None and got != want:
                raise MixloraError(
                    f"{source}: {key} has shape {list(shape)}, but the base it records has {side} "
                    f"size {want} ({recorded}): a damaged adapter, or one made for a different base"
                )


def rank_fits(rank: int, targets: Iterable[str], base: Mapping[str, Any]) -> None:
    """A LoRA rank above a layer's smaller side adds parameters and no expressiveness: refuse."""
    sizes = _module_sizes(base)
    for t in targets:
        fan_in, fan_out = sizes.get(t, (None, None))
        if isinstance(fan_in, int) and isinstance(fan_out, int) and rank > min(fan_in, fan_out):
            raise MixloraError(
                f"rank {rank} is larger than {t}'s smaller side ({fan_in} in, {fan_out} out)"
            )


def checkpoint_step(step: Any, path: Path, total: int | None) -> int:
    """A checkpoint's recorded step: an integer, the one its directory is named after, before the end."""
    named = path.name.removeprefix("step_")
    ok = isinstance(step, int) and not isinstance(step, bool) and step >= 1
    ok = ok and named.isdigit() and int(named) == step and (total is None or step < total)
    if not ok:
        raise MixloraError(
            f"{path}/state.json: step {step!r} is not this checkpoint's step"
            + (f" (1..{total - 1})" if total else "")
            + "; the checkpoint is damaged: delete it or train without --resume"
        )
    return step


def same_base(router: Any, base: Mapping[str, Any], source: Any) -> Any:
    """A saved router (gate) must come from this base: shapes and weight fingerprint agree."""
    recorded = getattr(getattr(router, "config", None), "base_model", None) or {}
    for key in ("hidden_size", "num_hidden_layers", "fingerprint"):
        mine, theirs = recorded.get(key), base.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise MixloraError(
                f"{source} was trained on a different base model ({key} {mine} vs {theirs})"
            )
    return router


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
