"""One config form for every LlamaForCausalLM config.json transformers has written.

transformers 4.x writes RoPE settings as top-level ``rope_theta`` plus
``rope_scaling`` (its kind under ``type`` in old files, ``rope_type`` in newer
ones); transformers 5.x writes one ``rope_parameters`` dict holding
``rope_theta`` and ``rope_type``. mlx-lm reads only the 4.x keys, so a 5.x
config passed through unchanged silently runs with theta = 10000 and no scaling.
`normalize_llama_config` rewrites either form into the 4.x one with every value
transformers would default spelled out (mlx-lm's defaults differ: e.g. llama3's
``original_max_position_embeddings`` is 8192 there, ``max_position_embeddings``
in transformers), and refuses, naming the field, what mlx-lm would compute
differently from transformers.
"""

from __future__ import annotations

import math

from ..errors import MixloraError

# transformers' LlamaConfig defaults (the same in 4.x and 5.x)
DEFAULT_THETA = 10000.0
DEFAULT_RMS_NORM_EPS = 1e-6
DEFAULT_MAX_POSITIONS = 2048
ROPE_KINDS = ("default", "linear", "dynamic", "llama3", "yarn")
# keys each kind may carry besides rope_type/type/rope_theta; anything else changes transformers' result
_ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor", "original_max_position_embeddings"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "attention_factor",
        "truncate",
    },
}


def _refuse(src: str, field: str, why: str) -> MixloraError:
    return MixloraError(f"{src}/config.json: {field} {why}; neither mixlora nor mlx-lm computes it")


def _rope_source(config: dict) -> tuple[float, dict | None]:
    """(theta, scaling dict or None) as transformers 5 reads them (4.x reads the same from its keys)."""
    params = config.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise MixloraError(f"config.json: rope_parameters must be an object, got {params!r}")
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise MixloraError(f"config.json: rope_scaling must be an object, got {scaling!r}")
    # transformers 5 reads a non-empty rope_scaling *instead of* rope_parameters (theta included:
    # then from rope_scaling, else top level, else the default), as 4.x does
    merged = dict(scaling or params or {})
    theta = merged.pop("rope_theta", None)
    if theta is None:
        theta = config.get("rope_theta", DEFAULT_THETA)
    kind = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
    merged.pop("type", None)
    return float(theta), ({"rope_type": kind, **merged} if kind != "default" or merged else None)


def _scaling(config: dict, scaling: dict, src: str) -> dict | None:
    """The scaling dict mlx-lm computes exactly as transformers does, or a refusal."""
    kind = scaling["rope_type"]
    if kind not in ROPE_KINDS:
        raise _refuse(
            src, f"rope_type {kind!r}", f"is not a Llama RoPE kind ({', '.join(ROPE_KINDS)})"
        )
    params = {k: v for k, v in scaling.items() if k != "rope_type"}
    prf = params.pop("partial_rotary_factor", 1.0)
    if prf not in (1, 1.0, None):
        raise _refuse(src, "partial_rotary_factor", f"= {prf} (RoPE on part of each head)")
    extra = sorted(set(params) - _ROPE_KEYS[kind])
    if extra:
        raise _refuse(src, f"rope {kind} field {extra[0]!r}", "is not a field of that RoPE kind")
    if kind == "default":
        return None
    max_pos = config.get("max_position_embeddings")
    factor = params.get("factor")
    if kind != "yarn" and not isinstance(factor, (int, float)):
        raise MixloraError(f"{src}/config.json: rope {kind} scaling needs a numeric 'factor'")
    out = {"rope_type": kind, "type": kind, **params}
    if kind == "dynamic":
        orig = params.get("original_max_position_embeddings", max_pos)
        if orig != max_pos:
            raise _refuse(
                src,
                "rope dynamic original_max_position_embeddings",
                f"= {orig} differs from max_position_embeddings = {max_pos}",
            )
        out.pop("original_max_position_embeddings", None)
    if kind == "llama3":
        out.setdefault("original_max_position_embeddings", max_pos)
        for key in ("low_freq_factor", "high_freq_factor"):
            if not isinstance(out.get(key), (int, float)):
                raise MixloraError(
                    f"{src}/config.json: rope llama3 scaling needs a numeric {key!r}"
                )
    if kind == "yarn":
        out = _yarn(out, max_pos, src)
    return out


def _yarn(out: dict, max_pos: int | None, src: str) -> dict:
    """transformers' yarn in mlx-lm's terms: its defaults made explicit, the rest refused."""
    orig = out.setdefault("original_max_position_embeddings", max_pos)
    if not isinstance(orig, int):
        raise MixloraError(f"{src}/config.json: rope yarn needs original_max_position_embeddings")
    if out.get("factor") is None:  # transformers: the context extension ratio
        out["factor"] = max_pos / orig
    if out.pop("truncate", True) is not True:
        raise _refuse(src, "rope yarn truncate", "= false (an untruncated correction range)")
    for key, default in (("beta_fast", 32), ("beta_slow", 1)):
        out[key] = out.get(key) or default  # transformers treats 0/None as the default
    mscale, all_dim = out.pop("mscale", None), out.pop("mscale_all_dim", None)
    factor = out["factor"]

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if mscale and all_dim:  # transformers uses the ratio only when both are set, as mlx-lm does
        out["mscale"], out["mscale_all_dim"] = mscale, all_dim
        expected = get_mscale(factor, mscale) / get_mscale(factor, all_dim)
    else:
        expected = get_mscale(factor)
    given = out.pop("attention_factor", None)
    if given is not None and not math.isclose(given, expected, rel_tol=1e-6):
        raise _refuse(
            src,
            "rope yarn attention_factor",
            f"= {given} differs from the one implied ({expected:.6g})",
        )
    return out


def normalize_llama_config(config: dict, src: str = "checkpoint") -> dict:
    """`config` in the form mlx-lm and transformers 4.x/5.x all read the same way (a new dict)."""
    out = dict(config)
    if out.get("hidden_act", "silu") != "silu":
        raise _refuse(src, f"hidden_act {out['hidden_act']!r}", "is not SwiGLU's silu")
    if out.get("rope_traditional"):
        raise _refuse(src, "rope_traditional", "is set (transformers' Llama rotates halves)")
    out.setdefault("max_position_embeddings", DEFAULT_MAX_POSITIONS)
    theta, scaling = _rope_source(out)
    out.pop("rope_parameters", None)
    out["rope_theta"] = theta
    out["rope_scaling"] = _scaling(out, scaling, src) if scaling else None
    out.setdefault("rms_norm_eps", DEFAULT_RMS_NORM_EPS)
    out.setdefault("tie_word_embeddings", False)  # mlx-lm's own default is True
    head_dim = out.get("head_dim")
    if head_dim is None:
        out["head_dim"] = out["hidden_size"] // out["num_attention_heads"]
    if "dtype" in out:  # transformers 5 renamed torch_dtype; 4.x reads only the old name
        out.setdefault("torch_dtype", out.pop("dtype"))
    return out
