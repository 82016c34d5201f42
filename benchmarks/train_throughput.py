"""LoRA training throughput: our trainer vs mlx-lm's LoRA trainer vs PyTorch+PEFT.

Same random TinyLlama-shaped model (2 layers: hidden 2048, intermediate 5632,
32 heads, 4 KV heads, vocab 32000, fp32), same token data, r=8 on q/k/v/o,
AdamW lr 1e-4, no clipping, no dropout. Each peer runs in its own process (so
peak memory is its own). Tokens/s counts real (non-padding) input tokens over
every step but the first (compile / warm-up).

(a) uniform LM: batch 4 x 256 tokens, loss on every token.
(b) seed-like: prompts of 60-400 tokens, answers of 1-10 tokens, loss on the
    answers only (mlx-lm: mask_prompt offsets); one epoch over the same
    examples for each peer. `ours` uses length-sorted batches of 4 like
    mlx-lm (prompts this long leave little padding); `ours_packed` packs the
    same 4 examples a step into 512-token rows (block-diagonal attention does
    extra, masked work on rows this long, so it is reported but not the headline).

Peers run as they ship, with one exception: MLX peers get the OpenBLAS preload
(without it the Linux mlx wheel does ~4 GFLOP/s and no comparison means
anything). Importing mlx_mixlora also raises glibc's mmap threshold (see
`mlx_mixlora.cpu.heap`), which speeds up any program here that frees large
buffers; `PEER+heap` (e.g. mlx_lm+heap) runs a peer with that setting too, so
the report shows how much of the lead is that setting.

The GEMM share: after (a), each of ours, mlx_lm and torch_peft times the step's
matrix products (`bench.gemm.train_step_gemms`: base and LM-head products forward and
input-gradient, attention both ways; ~631 GFLOP) one by one in its own framework
and BLAS, as its trainer runs them (torch and mlx-lm: the whole batch, every
thread; ours: half the batch on each of 2 CPU streams, one BLAS thread each, as
`train.parallel` does). A step's `non_gemm_seconds` is its
mean timed step minus that GEMM time: what carries over to a CPU whose BLAS is as
fast but whose elementwise code is not. `speedup_bound_zero_non_gemm` is torch+PEFT's
step over our GEMM time: the most that cutting non-GEMM work alone can gain on torch.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json

`PEER@BLAS` (e.g. `--peers-a ours,ours@system`) runs an MLX peer with MIXLORA_BLAS=BLAS,
interleaved with the others, so `speedup_vs_ours@system` is the wheel ÷ Debian's OpenBLAS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlx_mixlora.bench.env import load_average, machine_record, versions
from mlx_mixlora.bench.gemm import gemm_share, mlx_seconds, train_step_gemms
from mlx_mixlora.bench.process import peer_env, run_json
from mlx_mixlora.bench.spec import TARGETS, TINYLLAMA, Sizes, random_model
from mlx_mixlora.io import write_json

MODEL_CFG = dict(TINYLLAMA, num_hidden_layers=2)
LORA = Sizes()  # rank 8, alpha 16, lr 1e-4: the bench's defaults


def make_model_dir(path: Path) -> Path:
    """A random fp32 TinyLlama-shaped 2-layer MLX model dir (weights in HF names)."""
    if (path / "model.safetensors").is_file():
        return path
    return random_model(path, MODEL_CFG)


def make_data(path: Path, steps_a: int, examples_b: int, seed: int = 0) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.integers(3, MODEL_CFG["vocab_size"], (4 * steps_a, 257)).tolist()
    b = []
    for _ in range(examples_b):
        p = rng.integers(3, MODEL_CFG["vocab_size"], int(rng.integers(60, 401))).tolist()
        c = rng.integers(3, MODEL_CFG["vocab_size"], int(rng.integers(1, 11))).tolist()
        b.append([p, c])
    path.write_text(json.dumps({"a": a, "b": b}))
    return path


# The peers live in the package (`mlx_mixlora.bench.*_backend`), shared with `mixlora bench`;
# each is imported only in its own worker process (an MLX peer never loads torch).
WORKERS = {  # peer -> (backend module, trainer, extra arguments)
    "ours": ("mlx_backend", "train_ours", {}),
    "ours_packed": ("mlx_backend", "train_ours", {"pack": True}),
    "mlx_lm": ("mlx_lm_backend", "train_mlx_lm", {}),
    "torch_peft": ("torch_backend", "train_peft", {}),
}
HEAP = "+heap"  # suffix: run the peer with our glibc heap setting too
BLAS_AT = "@"  # suffix: ours@system runs ours with MIXLORA_BLAS=system (vs the default choice)
GEMM_PEERS = ("ours", "mlx_lm", "torch_peft")  # (a) only: also time the step's GEMMs alone


def work(peer: str, model_dir: Path, data: dict, workload: str) -> dict:
    peer = peer.split(BLAS_AT)[0]
    module, fn, kw = WORKERS[peer.removesuffix(HEAP)]
    mod = importlib.import_module(f"mlx_mixlora.bench.{module}")
    if module == "torch_backend":
        kw = {"device": mod.best_device()}
    out = getattr(mod, fn)(model_dir, data, workload, LORA, **kw)
    if workload == "a" and peer in GEMM_PEERS and out.get("timed_steps"):
        gemms = train_step_gemms(MODEL_CFG, 4, len(data["a"][0]) - 1)
        streams = 1  # as each trainer runs them: ours splits the batch over CPU streams
        if module == "torch_backend":
            seconds = mod.gemm_seconds(gemms, **kw)
        else:
            if peer == "ours":
                from mlx_mixlora.cpu.streams import default_streams

                streams = default_streams()
            seconds = mlx_seconds(gemms, streams)
        out["gemm_streams"] = streams
        out["gemm"] = gemm_share(gemms, seconds, out["timed_seconds"] / out["timed_steps"])
    return out


def run_worker(peer: str, workload: str, model_dir: Path, data: Path, tmp: Path) -> dict:
    result = tmp / f"{peer}-{workload}.json"
    cmd = [sys.executable, __file__, "--worker", peer, "--workload", workload, "--model-dir", str(model_dir),
           "--data", str(data), "--result", str(result)]  # fmt: skip
    name, _, blas = peer.partition(BLAS_AT)
    env = peer_env(name.startswith("ours"), name.startswith("torch_peft"), name.endswith(HEAP))
    if blas:
        env["MIXLORA_BLAS"] = blas
    out, wall = run_json(cmd, result, env)
    if "error" not in out:
        out["wall_seconds"] = round(wall, 1)
    return out


def paired_ratios(ours: list[dict], peer: list[dict], key: str) -> list[float]:
    """ours ÷ peer of `key`, round by round, over the rounds where both have it."""
    return [o[key] / r[key] for o, r in zip(ours, peer, strict=True) if o.get(key) and r.get(key)]


def non_gemm_summary(runs: dict[str, list[dict]]) -> dict:
    """Per peer: median non-GEMM seconds and share of a step, and the GEMM rate it measured."""
    out = {}
    for peer, rs in runs.items():
        gs = [r["gemm"] for r in rs if "gemm" in r]
        if gs:
            out[peer] = {
                key: round(statistics.median(g[key] for g in gs), 3)
                for key in ("step_seconds", "gemm_seconds_per_step", "gemm_gflops_measured",
                            "non_gemm_seconds", "non_gemm_share")
            }  # fmt: skip
    if "ours" in out and "torch_peft" in out:
        out["ours_share_le_torch_share"] = (
            out["ours"]["non_gemm_share"] <= out["torch_peft"]["non_gemm_share"]
        )
        # The most our step could gain on torch's by cutting non-GEMM work alone: torch's
        # step over our GEMM time (our step with zero non-GEMM time).
        out["speedup_bound_zero_non_gemm"] = round(
            out["torch_peft"]["step_seconds"] / out["ours"]["gemm_seconds_per_step"], 3
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    ap.add_argument("--workloads", default="a,b")
    ap.add_argument("--peers-a", default="ours,mlx_lm,torch_peft,mlx_lm+heap,torch_peft+heap")
    ap.add_argument(
        "--peers-b", default="ours,ours_packed,mlx_lm,mlx_lm+heap", help="torch_peft works here too"
    )
    ap.add_argument("--steps-a", type=int, default=6, help="steps in (a), the first is not timed")
    ap.add_argument("--examples-b", type=int, default=64, help="examples in (b), one epoch")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repeats; ratios are medians")
    ap.add_argument("--model-dir", default=None, help="reuse/create the random model here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        data = json.loads(Path(args.data).read_text())
        out = work(args.worker, Path(args.model_dir), data, args.workload)
        Path(args.result).write_text(json.dumps(out))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(args.model_dir) if args.model_dir else Path(tmp) / "model")
        data = make_data(Path(tmp) / "data.json", args.steps_a, args.examples_b)
        load_before = load_average()
        results: dict = {}
        for w in args.workloads.split(","):
            peers = getattr(args, f"peers_{w}").split(",")
            runs: dict[str, list[dict]] = {p: [] for p in peers}
            for rnd in range(args.rounds):  # interleaved, so load changes hit every peer alike
                for peer in peers:
                    print(f"[{w}] {peer} (round {rnd + 1}) ...", file=sys.stderr, flush=True)
                    r = run_worker(peer, w, model_dir, data, Path(tmp))
                    r["load_average_1min"] = load_average()[0]
                    runs[peer].append(r)
                    print(
                        f"[{w}] {peer}: {r.get('tokens_per_second', r.get('error'))} tok/s",
                        file=sys.stderr,
                    )
            results[w] = {p: (rs[0] if len(rs) == 1 else {"rounds": rs}) for p, rs in runs.items()}
            for peer in peers:
                if peer == "ours" or "ours" not in runs:
                    continue
                ratios = paired_ratios(runs["ours"], runs[peer], "tokens_per_second")
                if ratios:
                    results[w][f"speedup_vs_{peer}"] = round(statistics.median(ratios), 3)
                    if len(ratios) > 1:
                        results[w][f"speedup_vs_{peer}_per_round"] = [round(x, 3) for x in ratios]
                cpu = paired_ratios(runs["ours"], runs[peer], "tokens_per_cpu_second")
                if cpu:
                    results[w][f"cpu_efficiency_vs_{peer}"] = round(statistics.median(cpu), 3)
            shares = non_gemm_summary(runs)
            if shares:
                results[w]["non_gemm"] = shares
        load_after = load_average()

    from mlx_mixlora.cpu.blas import blas_status
    from mlx_mixlora.cpu.heap import malloc_status

    report = {
        "benchmark": "train_throughput",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_record(gemm=False),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "blas": blas_status(),
        "heap_tuning_ours": malloc_status(),
        "versions": versions(),
        "model": MODEL_CFG,
        "lora": {
            "rank": LORA.rank,
            "alpha": LORA.alpha,
            "targets": TARGETS,
            "lr": LORA.lr,
            "dtype": "float32",
        },
        "workloads": {
            "a": f"uniform LM, batch 4 x 256, loss on every token, {args.steps_a} steps (first untimed)",
            "b": f"{args.examples_b} prompt-masked examples (prompt 60-400, answer 1-10 tokens), one epoch",
        },
        "targets": {
            "a": "ours >= 1.4x mlx_lm and >= 1.2x torch_peft; ours' non-GEMM share of a step "
            "<= torch_peft's (results.a.non_gemm)",
            "b": "ours >= 2x mlx_lm",
        },
        "peers": "as they ship (MLX peers: with the OpenBLAS preload); PEER+heap: also with "
        "mlx_mixlora's glibc heap setting (MIXLORA_NO_MALLOC_TUNING unset)",
        "rounds": args.rounds,
        "note": "wall-clock tokens/s on a shared 2-core machine: see load_average_*; "
        "tokens_per_cpu_second divides by the process's CPU time and is less sensitive to other load",
        "results": results,
    }
    write_json(args.out, report)
    print(
        json.dumps(
            {w: {k: v for k, v in r.items() if k.startswith("speedup")} for w, r in results.items()}
        )
    )


if __name__ == "__main__":
    main()
