"""Tiny transformers-saved Llama checkpoints in each config form transformers has written.

The installed transformers (5.x) saves RoPE settings as ``rope_parameters``.
transformers 4.x wrote top-level ``rope_theta`` and ``rope_scaling`` (kind under
``type`` before 4.43, ``rope_type`` after); those fixtures are the 5.x-saved
weights with config.json rewritten into the 4.x keys by `_as_4x` — the weights'
format is the same in both versions, only the config keys differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_hf_llama

THETA = 500000.0
# q/k weights are scaled by this after init: random init's attention is nearly uniform, so
# positions (what every RoPE form changes) would barely move the logits
QK_SCALE = 8.0
# name -> (LlamaConfig kwargs, how config.json is written: "5x", "4x-type", "4x-rope_type")
_DEFAULT = {"rope_parameters": {"rope_type": "default"}}
_LLAMA3 = {
    "rope_parameters": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,  # short, so scaling changes logits at 12 tokens
    }
}
_LINEAR = {"rope_parameters": {"rope_type": "linear", "factor": 4.0}}
_HEAD_DIM_BIASES = {**_DEFAULT, "head_dim": 32, "attention_bias": True, "mlp_bias": True}
# name -> (LlamaConfig kwargs, how config.json is written: "5x", "4x-type", "4x-rope_type")
FORMS: dict[str, tuple[dict, str]] = {
    "theta5e5-rope_parameters": (_DEFAULT, "5x"),
    "theta5e5-4x": (_DEFAULT, "4x-type"),
    "llama3-rope_parameters": (_LLAMA3, "5x"),
    "llama3-4x-rope_type": (_LLAMA3, "4x-rope_type"),
    "linear-4x-type": (_LINEAR, "4x-type"),
    "linear-rope_parameters": (_LINEAR, "5x"),
    "dynamic-rope_parameters": (  # max positions 8 < 12 tokens: the dynamic base moves
        {"rope_parameters": {"rope_type": "dynamic", "factor": 3.0}, "max_position_embeddings": 8},
        "5x",
    ),
    "yarn-rope_parameters": (
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            "max_position_embeddings": 64,
        },
        "5x",
    ),
    "yarn-mscale-rope_parameters": (  # mscale without mscale_all_dim: transformers ignores it
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "mscale": 2.0,
                "beta_fast": 8,
            },
            "max_position_embeddings": 64,
        },
        "5x",
    ),
    "head_dim32-biases": (_HEAD_DIM_BIASES, "5x"),
    "head_dim32-biases-4x": (_HEAD_DIM_BIASES, "4x-type"),
}


def _as_4x(config: dict, kind_key: str) -> dict:
    """config.json as transformers 4.x wrote it: rope_theta + rope_scaling at top level."""
    out = dict(config)
    params = dict(out.pop("rope_parameters"))
    out["rope_theta"] = params.pop("rope_theta")
    kind = params.pop("rope_type")
    out["rope_scaling"] = None if kind == "default" else {kind_key: kind, **params}
    if "dtype" in out:
        out["torch_dtype"] = out.pop("dtype")
    return out


def _sharpen_attention(path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    for f in path.glob("*.safetensors"):
        weights = load_file(str(f))
        for name in weights:
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                weights[name] = weights[name] * QK_SCALE
        save_file(weights, str(f), metadata={"format": "pt"})


def make_form_llama(path: Path, form: str, **kwargs) -> Path:
    """A saved checkpoint (theta 5e5 everywhere) whose config.json is in `form` (a FORMS key)."""
    cfg_kwargs, layout = FORMS[form]
    cfg_kwargs = json.loads(json.dumps(cfg_kwargs))  # deep copy
    cfg_kwargs.setdefault("rope_parameters", {})["rope_theta"] = THETA
    make_hf_llama(path, config_extra=cfg_kwargs, **kwargs)
    _sharpen_attention(path)
    cfg_file = path / "config.json"
    config = json.loads(cfg_file.read_text())
    assert config["rope_parameters"]["rope_theta"] == THETA, (
        config
    )  # transformers 5 wrote the 5.x form
    if layout != "5x":
        config = _as_4x(config, "type" if layout == "4x-type" else "rope_type")
        cfg_file.write_text(json.dumps(config, indent=2))
    return path


TRANSFORMERS4_ENV = "MIXLORA_TRANSFORMERS4_SITE"
_LOGITS_CODE = """
import json, sys, torch, transformers
from transformers import LlamaForCausalLM
m = LlamaForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32, attn_implementation="eager")
with torch.no_grad():
    out = m(torch.tensor(json.loads(sys.argv[2]))).logits
print(json.dumps({"version": transformers.__version__, "logits": out.tolist()}))
"""


def other_transformers_logits(site: str, path: Path, ids) -> tuple[str, object]:
    """(version, logits) from the transformers installed under `site` (e.g. 4.57.1), in a subprocess.

    The default suite has one transformers; `MIXLORA_TRANSFORMERS4_SITE` names a
    directory holding another (e.g. `pip install --target DIR transformers==4.57.1
    'huggingface_hub<1' 'tokenizers<0.23' requests`) to check the 4.x reading.
    """
    import os
    import subprocess
    import sys

    import numpy as np

    env = dict(os.environ, PYTHONPATH=site, TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, "-c", _LOGITS_CODE, str(path), json.dumps(ids)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["version"], np.array(result["logits"], dtype=np.float32)
