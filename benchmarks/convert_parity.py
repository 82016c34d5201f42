"""Logit parity of `mixlora convert` against transformers, as JSON.

Builds tiny random LlamaForCausalLM checkpoints (the test suite's builders),
converts each with `mixlora convert` and reports the max |Δlogit| of our MLX
forward and of `mlx_lm.load` against transformers (fp32, eager attention).
One row per shape case (GQA, tying, dtype, shards) and per config form
(tests/helpers_convert.FORMS: transformers 4.x and 5.x RoPE forms, llama3,
linear, dynamic, yarn, explicit head_dim with biases); form rows also convert
back with `mixlora export hf` and report transformers on that, and with
--transformers4 DIR (a site dir holding transformers 4.x) 4.x on it too.

    python benchmarks/convert_parity.py --out benchmarks/results/convert_parity.json \
        [--tinyllama-shape] [--transformers4 DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import mlx_mixlora  # noqa: F401  (OpenBLAS before mlx.core)
from mlx_mixlora.bench.env import machine_record, versions
from mlx_mixlora.bench.report import publish

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CASES = [
    {"name": "gqa2x-untied-fp32", "heads": 4, "kv_heads": 2, "tied": False, "dtype": "float32"},
    {"name": "gqa8x-tied-fp32", "heads": 8, "kv_heads": 1, "tied": True, "dtype": "float32"},
    {"name": "gqa2x-tied-bf16", "heads": 4, "kv_heads": 2, "tied": True, "dtype": "bfloat16"},
    {
        "name": "gqa8x-untied-bf16-sharded",
        "heads": 8,
        "kv_heads": 1,
        "tied": False,
        "dtype": "bfloat16",
        "max_shard_size": "40KB",
    },
]
TINYLLAMA = {
    "name": "tinyllama-shape-1layer-bf16",
    "hidden": 2048,
    "intermediate": 5632,
    "heads": 32,
    "kv_heads": 4,
    "vocab": 32000,
    "layers": 1,
    "dtype": "bfloat16",
    "tokenizer": False,
}


def measure(case: dict, work: Path) -> dict:
    import mlx.core as mx
    import mlx_lm.utils
    import numpy as np
    from conftest import hf_logits, make_hf_llama
    from mlx_mixlora.convert import ConvertOptions, convert_hf_to_mlx

    from mlx_mixlora.model import load_model

    kwargs = {k: v for k, v in case.items() if k != "name"}
    src = make_hf_llama(work / case["name"], **kwargs)
    dst = work / f"{case['name']}-mlx"
    convert_hf_to_mlx(str(src), dst, ConvertOptions(dtype="float32"))
    vocab = case.get("vocab", 256)
    ids = [[1, 17, 5, vocab - 1, 42, 7, vocab // 2, 3, 64, 128, 11, vocab - 6]]
    ref = hf_logits(src, ids)
    ours, _ = load_model(dst)
    theirs, _ = mlx_lm.utils.load_model(dst)
    return {
        "case": case["name"],
        "max_abs_diff_ours_vs_transformers": float(
            np.abs(np.array(ours(mx.array(ids))) - ref).max()
        ),
        "max_abs_diff_mlx_lm_vs_transformers": float(
            np.abs(np.array(theirs(mx.array(ids))) - ref).max()
        ),
        "logit_scale": float(np.abs(ref).max()),
    }


def measure_form(form: str, work: Path, transformers4: str | None) -> dict:
    import mlx.core as mx
    import mlx_lm
    import numpy as np
    import transformers
    from conftest import hf_logits
    from helpers_convert import FORMS, make_form_llama, other_transformers_logits
    from mlx_mixlora.convert import ConvertOptions, convert_hf_to_mlx
    from mlx_mixlora.convert.to_hf import export_hf

    from mlx_mixlora.model import load

    src = make_form_llama(work / form, form)
    dst = work / f"{form}-mlx"
    convert_hf_to_mlx(str(src), dst, ConvertOptions(dtype="float32"))
    ids = [[1, 17, 5, 99, 42, 7, 200, 3, 64, 128, 11, 250]]
    ref = hf_logits(src, ids)
    ours, _ = load(dst)
    theirs, _ = mlx_lm.load(str(dst))
    exported = export_hf(dst, work / f"{form}-hf")

    def diff(x) -> float:
        return float(np.abs(np.asarray(x) - ref).max())

    row = {
        "case": f"form:{form}",
        "config_written_by": FORMS[form][1],
        "source_rope": {
            k: v
            for k, v in json.loads((src / "config.json").read_text()).items()
            if k in ("rope_theta", "rope_scaling", "rope_parameters", "head_dim")
        },
        "max_abs_diff_ours_vs_transformers": diff(ours(mx.array(ids))),
        "max_abs_diff_mlx_lm_vs_transformers": diff(theirs(mx.array(ids))),
        f"max_abs_diff_export_hf_transformers_{transformers.__version__}": diff(
            hf_logits(exported, ids)
        ),
        "logit_scale": float(np.abs(ref).max()),
    }
    if transformers4:
        version, logits4 = other_transformers_logits(transformers4, exported, ids)
        row[f"max_abs_diff_export_hf_transformers_{version}"] = diff(logits4)
    # what ignoring the form costs: the same weights with theta 10000 and no scaling
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(
        json.dumps(dict(config, rope_theta=10000.0, rope_scaling=None))
    )
    row["max_abs_diff_if_form_ignored"] = diff(load(dst)[0](mx.array(ids)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--tinyllama-shape", action="store_true", help="also a 1-layer TinyLlama-shaped checkpoint"
    )
    parser.add_argument(
        "--transformers4", default=None, help="site dir with transformers 4.x for the export rows"
    )
    args = parser.parse_args()
    from helpers_convert import FORMS

    cases = CASES + ([TINYLLAMA] if args.tinyllama_shape else [])
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(c, Path(tmp)) for c in cases]
        results += [measure_form(f, Path(tmp), args.transformers4) for f in FORMS]
    report = {
        "command": " ".join(sys.argv),
        "machine": machine_record(gemm=False),
        "versions": versions(),
        "results": results,
    }
    publish(report, args.out)


if __name__ == "__main__":
    main()
