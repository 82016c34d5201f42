"""Packing on short rows: `--iters N --batch-size B` packed vs unpacked (vs the old packing).

The issue-21 case: 200 short prompt/completion rows (prompts 18-30 tokens,
answers 2-4), `--iters 80 --batch-size 8`, r=8 on q/k/v/o, on a random small
Llama (4 layers, hidden 512, vocab 32000, fp32). Each peer runs in its own
process (its own peak memory), whole process timed cold beside the training
loop's own seconds:

- `packed`   : this branch, packing on — a step is 8 examples laid into few rows;
- `unpacked` : this branch, `pack: false` — a step is 8 examples, one per row;
- `packed_before` (with `--before REV`): the trainer at REV, where a packed
  step was 8 *rows* of up to 512 tokens each (about 19 examples per row here).

Every peer also counts the examples and tokens its batches held.

`--case grad-checkpoint` measures `--grad-checkpoint`'s memory/time trade on the
same model with long rows (prompts 400-500 tokens, batch 8, unpacked): peers
`no_checkpoint` and `grad_checkpoint`.

    python benchmarks/packing.py --before e55a3fa --out benchmarks/results/packing.json
    python benchmarks/packing.py --case grad-checkpoint --iters 10 --out benchmarks/results/grad_checkpoint.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mlx_mixlora.bench.env import load_average, machine_record
from mlx_mixlora.bench.process import peer_env, run_json
from mlx_mixlora.bench.spec import TARGETS, TINYLLAMA, Sizes, random_model
from mlx_mixlora.io import write_json

MODEL_CFG = dict(TINYLLAMA, hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                 num_key_value_heads=2, num_hidden_layers=4)  # fmt: skip
LORA = Sizes()
PEERS = {  # peer -> (pack, grad_checkpoint)
    "packed": (True, False),
    "unpacked": (False, False),
    "packed_before": (True, False),
    "no_checkpoint": (False, False),
    "grad_checkpoint": (False, True),
}
PROMPT_TOKENS = {"packing": (18, 31), "grad-checkpoint": (400, 501)}


def make_rows(n: int, case: str = "packing", seed: int = 0) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    v = MODEL_CFG["vocab_size"]
    return [
        {
            "prompt": " ".join(
                map(str, rng.integers(3, v, int(rng.integers(*PROMPT_TOKENS[case]))))
            ),
            "completion": " ".join(map(str, rng.integers(3, v, int(rng.integers(2, 5))))),
        }
        for _ in range(n)
    ]


def worker(model_dir: Path, rows: list[dict], peer: str, iters: int, batch: int) -> dict:
    """One training run in this process; counts what its batches held."""
    import mlx.core as mx

    from mlx_mixlora.bench.mlx_backend import IntTokenizer, load_fp32
    from mlx_mixlora.bench.timing import max_rss_gb, train_summary
    from mlx_mixlora.train import TrainConfig, train_adapter, trainer

    held = {"examples": 0, "rows": 0, "batches": 0}
    real = trainer.make_batch

    def counted(items, batch_rows, max_len, packed):
        held["examples"] += sum(len(r) for r in batch_rows)
        held["rows"] += len(batch_rows)
        held["batches"] += 1
        return real(items, batch_rows, max_len, packed)

    trainer.make_batch = counted
    model, _ = load_fp32(model_dir)
    pack, ckpt = PEERS[peer]
    cfg = TrainConfig(rank=LORA.rank, alpha=LORA.alpha, targets=TARGETS, lr=LORA.lr, seed=0,
                      iters=iters, batch_size=batch, max_seq_len=512, pack=pack)  # fmt: skip
    if ckpt:  # a field only the current trainer has
        cfg.grad_checkpoint = True
    mx.reset_peak_memory()
    res = train_adapter((model, IntTokenizer()), rows, None, cfg, progress=False)
    hist = res.history
    out = train_summary([h["tokens"] for h in hist], [h["seconds"] for h in hist],
                        [h["cpu_seconds"] for h in hist])  # fmt: skip
    out.update(
        train_seconds=round(sum(h["seconds"] for h in hist), 2),
        tokens_trained=res.tokens,
        examples_trained=held["examples"],
        rows=held["rows"],
        steps=res.steps,
        final_loss=res.train_loss,
        peak_mlx_memory_gb=round(mx.get_peak_memory() / 2**30, 3),
        max_rss_gb=round(max_rss_gb(), 3),
    )
    return out


def checkout(rev: str, where: Path) -> Path:
    """The package at `rev`, extracted (git archive) for the `packed_before` peer."""
    where.mkdir(parents=True)
    repo = Path(__file__).resolve().parent.parent
    tar = subprocess.run(["git", "-C", str(repo), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=tar.stdout, check=True)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results/packing.json")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--iters", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--before", default=None, help="git rev of the trainer before the change")
    ap.add_argument("--case", choices=sorted(PROMPT_TOKENS), default="packing")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        out = worker(Path(args.model_dir), make_rows(args.rows, args.case), args.worker,
                     args.iters, args.batch_size)  # fmt: skip
        Path(args.result).write_text(json.dumps(out))
        return

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model(Path(tmp) / "model", MODEL_CFG)
        peers = ["packed", "unpacked"] + (["packed_before"] if args.before else [])
        if args.case == "grad-checkpoint":
            peers = ["no_checkpoint", "grad_checkpoint"]
        old = checkout(args.before, Path(tmp) / "before") if args.before else None
        for peer in peers:
            result = Path(tmp) / f"{peer}.json"
            cmd = [sys.executable, __file__, "--worker", peer, "--model-dir", str(model_dir),
                   "--result", str(result), "--rows", str(args.rows), "--iters", str(args.iters),
                   "--batch-size", str(args.batch_size), "--case", args.case]  # fmt: skip
            env = peer_env(True)
            if peer == "packed_before":  # the old package first on the path
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(old), env.get("PYTHONPATH")]))
            print(f"{peer} ...", file=sys.stderr, flush=True)
            r, wall = run_json(cmd, result, env)
            r["wall_seconds_cold"] = round(wall, 1)
            r["load_average_1min"] = load_average()[0]
            results[peer] = r
            print(f"{peer}: {json.dumps(r)}", file=sys.stderr, flush=True)
    a, b = peers[0], peers[1]
    p, u = results[a], results[b]
    ratios = {}
    if "error" not in p and "error" not in u:
        ratios = {
            f"{a}_over_{b}_train_seconds": round(p["train_seconds"] / u["train_seconds"], 3),
            f"{a}_over_{b}_wall_seconds": round(p["wall_seconds_cold"] / u["wall_seconds_cold"], 3),
            f"{a}_over_{b}_peak_memory": round(
                p["peak_mlx_memory_gb"] / u["peak_mlx_memory_gb"], 3
            ),
        }
    report = {
        "benchmark": "packing",
        "machine": machine_record(gemm=False),
        "model": MODEL_CFG,
        "lora": {"rank": LORA.rank, "alpha": LORA.alpha, "targets": TARGETS, "lr": LORA.lr},
        "case": f"{args.case}: {args.rows} rows (prompt {PROMPT_TOKENS[args.case]} tokens, "
        f"answer 2-4), --iters {args.iters} --batch-size {args.batch_size}, max_seq_len 512",
        "before": args.before,
        "target": "packed: iters x batch-size examples, train time and peak memory <= unpacked"
        if args.case == "packing"
        else "grad-checkpoint: the peak memory it saves and the time it costs",
        "note": "wall seconds on a shared machine: see load_average_1min per peer",
        "results": results,
        "ratios": ratios,
    }
    write_json(args.out, report)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
