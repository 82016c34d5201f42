"""Logit parity of `mixlora convert` against transformers, as JSON.

Builds tiny random LlamaForCausalLM checkpoints (the test suite's builder),
converts each with `mixlora convert` and reports the max |Δlogit| of our MLX
forward and of `mlx_lm.load` against transformers (fp32, eager attention).

    python benchmarks/convert_parity.py --out benchmarks/results/convert_parity.json [--tinyllama-shape]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import mlx_mixlora  # noqa: F401  (OpenBLAS before mlx.core)
from mlx_mixlora.io import write_json

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--tinyllama-shape", action="store_true", help="also a 1-layer TinyLlama-shaped checkpoint"
    )
    args = parser.parse_args()
    cases = CASES + ([TINYLLAMA] if args.tinyllama_shape else [])
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(c, Path(tmp)) for c in cases]
    report = {"command": " ".join(sys.argv), "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
