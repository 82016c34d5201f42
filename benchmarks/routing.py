"""Routing execution speed, as JSON: fused decode, adapter switch, mixed-adapter prefill, PEFT.

TinyLlama-shaped random model (hidden 2048, 32 heads / 4 KV heads, intermediate
5632, vocab 32000, --layers decoder layers), fp32 on this machine's default
device; four random rank-8 adapters (--rank; the project's recipes use 8) on all seven
projections of every layer; the switch is also timed at rank 16 (--switch-ranks).

- decode: mlx-lm `generate_step` (what `generate` runs) decode tokens/s on the base vs with one adapter fused
  (`route.fused`), alternating runs, median; target ratio >= 0.97.
- switch: `AdapterSwitcher.apply` (restore the previous adapter + fuse the next into
  the old buffers, every method; default delta, amortised over its refresh cycle;
  also `merge.fuse_deltas` + `restore`) vs one read+write pass over
  the same weights (a copy into reused buffers; a fresh-allocation pass is also
  recorded: it pays page faults); target ratio <= 1.5.
- prefill: one forward over 8 prompts, 2 per adapter (`attach_mixed`, grouped on
  CPU) vs the same batch on one adapter (our unfused `LoRALinear`); target >= 0.8.
- PEFT (when torch + peft are installed): the same shapes in transformers, the same
  batch through `model(input_ids, adapter_names=[...])` (mixed) and with one active
  adapter, on torch's CPU threads.

The machine is shared: `uptime` load averages are recorded with the numbers.

    python benchmarks/routing.py --out benchmarks/results/routing.json [--layers 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import mlx_mixlora  # noqa: F401  (OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np

from mlx_mixlora.adapter_format import Adapter, AdapterConfig
from mlx_mixlora.bench.env import load_average as load
from mlx_mixlora.bench.mlx_backend import decode_tps
from mlx_mixlora.bench.spec import TINYLLAMA, random_factors, random_llama
from mlx_mixlora.bench.timing import repeat, timed
from mlx_mixlora.io import write_json
from mlx_mixlora.modules import get_module
from mlx_mixlora.route import Decision, attach_mixed, detach_mixed, fused, mixed_forward
from mlx_mixlora.route.decision import decision_updates

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def model_config(a: argparse.Namespace) -> dict:
    """The Llama config both our model and PEFT's are built from."""
    return dict(TINYLLAMA, hidden_size=a.hidden, num_hidden_layers=a.layers,
                intermediate_size=a.intermediate, num_attention_heads=a.heads,
                num_key_value_heads=a.kv_heads, vocab_size=a.vocab)  # fmt: skip


def make_adapters(model, n: int, rank: int, layers: int) -> list[Adapter]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        cfg = AdapterConfig(rank, 2 * rank, TARGETS, list(range(layers)), name=f"a{i}")
        w = random_factors(cfg, lambda p: get_module(model, p).weight.shape, rng)
        mx.eval(w)
        out.append(Adapter(cfg, w, f"a{i}", "", str(i)))
    return out


def bench_decode(model, adapters, a) -> dict:
    prompt = mx.array(np.random.default_rng(1).integers(3, a.vocab, a.prompt_len).tolist())

    def tps() -> float:
        return decode_tps(model, prompt, a.decode_tokens)

    tps()  # warm-up
    base, fusedv = [], []
    d = Decision([0], [1.0], [])
    for _ in range(a.reps):
        base.append(tps())
        with fused(model, adapters, d):
            fusedv.append(tps())
    b, f = statistics.median(base), statistics.median(fusedv)
    return {
        "base_tokens_per_s": round(b, 2),
        "fused_tokens_per_s": round(f, 2),
        "ratio": round(f / b, 4),
        "target": ">= 0.97",
        "runs_base": [round(x, 2) for x in base],
        "runs_fused": [round(x, 2) for x in fusedv],
        "prompt_tokens": a.prompt_len,
        "decode_tokens": a.decode_tokens,
    }


def bench_switch(model, adapters, a) -> dict:
    """Each switcher method over a run of switches (a full delta refresh cycle, twice), each
    switch paired with a read+write pass timed right before it; ratio = Σ switch / Σ pass."""
    from mlx_mixlora.merge import fuse_deltas, restore
    from mlx_mixlora.route import AdapterSwitcher

    upd = [decision_updates(adapters, Decision([i], [1.0], [])) for i in range(len(adapters))]
    mx.eval(upd)
    paths = list(upd[0])

    def weight(p):
        return get_module(model, p).weight

    weights = [weight(p) for p in paths]  # the base arrays: the switchers never change them
    base = dict(zip(paths, weights, strict=True))
    nbytes = sum(w.nbytes for w in weights)

    bufs = [mx.zeros_like(w) for w in weights]
    mx.eval(bufs)

    def one_pass() -> None:
        """Copy every adapted weight into a reused buffer: one read + one write, no allocation
        (the switcher also writes into reused buffers, so neither pays page faults)."""
        nonlocal bufs
        zero = mx.array([0])
        new = [mx.slice_update(b, w, zero, axes=(0,)) for b, w in zip(bufs, weights, strict=True)]
        bufs = []
        mx.eval(new)
        bufs = new

    def fresh_pass() -> None:
        out = [w + 1.0 for w in weights]
        mx.eval(out)

    gemm_bufs = [mx.array(w) for w in weights]
    mx.eval(gemm_bufs)

    def gemm_only() -> None:
        """The copy method's GEMM alone (W += B·A in reused buffers, no copy)."""
        nonlocal gemm_bufs
        new = [mx.addmm(g, *upd[0][p]) for g, p in zip(gemm_bufs, paths, strict=True)]
        gemm_bufs = []
        mx.eval(new)
        gemm_bufs = new

    def merge_api(i: int) -> None:  # the merging package's fuse_deltas + restore
        restore(model, fuse_deltas(model, upd[i]))  # fuse_deltas evaluates the new weights

    def ratios(pairs: list) -> dict:
        """pairs: [(switch (wall, cpu), pass (wall, cpu))]."""
        sw_wall, p_wall = [x[0][0] for x in pairs], [x[1][0] for x in pairs]
        return {
            "mean_s": round(statistics.mean(sw_wall), 5),
            "min_s": round(min(sw_wall), 5),
            "ratio": round(sum(sw_wall) / sum(p_wall), 4),
            "ratio_of_mins": round(min(sw_wall) / min(p_wall), 4),
            "cpu_ratio": round(sum(x[0][1] for x in pairs) / sum(x[1][1] for x in pairs), 4),
        }

    def drift_ulps(sw) -> float:
        """Largest |fused − fresh fuse| over the adapted weights, in ulps of the largest entry."""
        worst = 0.0
        for p in paths:
            got = np.array(weight(p))
            live = sw._live[p]
            want = np.array(mx.addmm(base[p], *live.ba))
            worst = max(worst, float(np.abs(got - want).max() / np.spacing(np.abs(want).max())))
        return worst

    methods = {"delta": {}, "copy": {}}
    defaults = AdapterSwitcher(model, adapters)
    n_switch = 2 * (defaults.refresh_every + 1)
    timed(one_pass)
    timed(fresh_pass)
    by_method: dict = {}
    drift = {}
    for name, kw in methods.items():
        method = name.split("-")[0]
        sw = AdapterSwitcher(model, adapters, method=method, **kw)
        sw.apply(Decision([len(adapters) - 1], [1.0], []))  # start from a fused state
        pairs, refreshes = [], []
        for k in range(n_switch if method == "delta" else 2 * a.reps):
            d = Decision([k % len(adapters)], [1.0], [])
            q = timed(one_pass)
            pairs.append((timed(lambda sw=sw, d=d: sw.apply(d)), q))  # restore + fuse next
            if method == "delta":
                deltas = next(iter(sw._live.values())).deltas
                refreshes.append(deltas == 0)
                if deltas == sw.refresh_every and not drift:  # the longest run of deltas
                    drift = {"max_drift_ulps": round(drift_ulps(sw), 2), "after_deltas": deltas}
        by_method[name] = ratios(pairs)
        if method == "delta":
            by_method[name]["delta_only"] = ratios(
                [x for x, r in zip(pairs, refreshes, strict=True) if not r]
            )
            by_method[name]["refresh_only"] = ratios(
                [x for x, r in zip(pairs, refreshes, strict=True) if r]
            )
            by_method[name]["refresh_every"] = sw.refresh_every
            by_method[name].update(drift)
        sw.release()
    gemms = [(timed(gemm_only), timed(one_pass)) for _ in range(2 * a.reps)]
    merges = [
        (timed(lambda k=k: merge_api(k % len(adapters))), timed(one_pass)) for k in range(a.reps)
    ]
    default = defaults.method
    head = by_method[default]
    p = min(x[1][0] for x in gemms)
    return {
        "rank": adapters[0].config.rank,
        "adapted_weight_bytes": nbytes,
        "read_write_pass_min_s": round(p, 5),
        "fresh_alloc_pass_min_s": round(min(timed(fresh_pass)[0] for _ in range(a.reps)), 5),
        "pass_GBps": round(2 * nbytes / p / 1e9, 2),
        "switcher_by_method": by_method,
        "default_method": default,
        "ratio": head["ratio"],
        "ratio_of_mins": head["ratio_of_mins"],
        "cpu_ratio": head["cpu_ratio"],
        "target": "<= 1.5",
        "merge_fuse_deltas": ratios(merges),
        "gemm_only": ratios(gemms),
        "note": "ratio = Σ switch time / Σ read+write pass time (a copy of every adapted weight "
        "into a reused buffer, timed right before each switch), default method; switch = restore "
        "(array swap) + fuse the next adapter into the previous fused buffers, cycling through "
        "the adapters; delta: two full refresh cycles (refresh_every deltas + one exact copy "
        "fuse each), so the ratio is amortised; max_drift_ulps = the delta method's worst "
        "|fused - fresh fuse| after the longest run of deltas; gemm_only = the copy method's "
        "in-place W += B·A alone",
    }


def bench_prefill(model, adapters, a) -> dict:
    from mlx_mixlora.lora import attach_lora, detach_lora

    rng = np.random.default_rng(2)
    toks = [rng.integers(3, a.vocab, a.prefill_len).tolist() for _ in range(8)]
    batch = mx.array(toks)
    mixed_idx = [0, 1, 2, 3, 0, 1, 2, 3]

    def timed(fn) -> float:
        return min(repeat(fn, a.reps))

    out: dict = {"prompts": 8, "tokens_per_prompt": a.prefill_len, "adapters_in_batch": 4}
    attach_lora(model, adapters[0].config, adapters[0].weights)
    out["one_adapter_lora_s"] = round(timed(lambda: mx.eval(model(batch))), 4)
    detach_lora(model)
    for backend in ("grouped", "gather"):
        attach_mixed(model, adapters, backend=backend)
        out[f"mixed_{backend}_s"] = round(
            timed(lambda: mx.eval(mixed_forward(model, toks, mixed_idx))), 4
        )
        out[f"one_adapter_mixed_{backend}_s"] = round(
            timed(lambda: mx.eval(mixed_forward(model, toks, [0] * 8))), 4
        )
        detach_mixed(model)
    mx.eval(model(batch))
    out["base_s"] = round(timed(lambda: mx.eval(model(batch))), 4)
    best = "grouped" if mx.default_device() == mx.cpu else "gather"
    out["backend"] = best
    out["ratio"] = round(out["one_adapter_lora_s"] / out[f"mixed_{best}_s"], 4)
    out["target"] = ">= 0.8 (throughput of the mixed batch / the one-adapter batch)"
    out["tokens_per_s_mixed"] = round(8 * a.prefill_len / out[f"mixed_{best}_s"], 1)
    return out


def bench_peft(adapters, a) -> dict:
    try:
        import torch
        from peft import LoraConfig, get_peft_model

        from mlx_mixlora.bench.torch_backend import lora_modules, random_torch_llama
    except ImportError as e:
        return {"skipped": f"torch/peft not installed ({e})"}
    base = random_torch_llama(model_config(a)).eval()
    lc = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=TARGETS, lora_dropout=0.0)
    model = get_peft_model(base, lc, adapter_name="a0")
    for i in range(1, len(adapters)):
        model.add_adapter(f"a{i}", lc)
    with torch.no_grad():  # same numbers as ours, so the work is identical
        for i, ad in enumerate(adapters):
            for p, mod in lora_modules(model):
                if f"a{i}" in mod.lora_A:
                    for ab, layer in (("a", mod.lora_A), ("b", mod.lora_B)):
                        w = np.array(ad.weights[f"{p}.lora_{ab}"])
                        layer[f"a{i}"].weight.copy_(torch.from_numpy(w))
    rng = np.random.default_rng(2)
    ids = torch.tensor(rng.integers(3, a.vocab, (8, a.prefill_len)))
    names = [f"a{i}" for i in [0, 1, 2, 3, 0, 1, 2, 3]]

    def timed(fn) -> float:
        with torch.inference_mode():
            return min(repeat(fn, a.reps))

    model.eval()
    model.set_adapter("a0")
    one = timed(lambda: model(ids))
    mixed = timed(lambda: model(ids, adapter_names=names))
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "one_adapter_s": round(one, 4),
        "mixed_adapter_names_s": round(mixed, 4),
        "ratio": round(one / mixed, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results/routing.json")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8, help="adapter rank (the project's recipes: 8)")
    ap.add_argument("--switch-ranks", default="16", help="also time the switch at these ranks")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prefill-len", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-peft", action="store_true")
    ap.add_argument(
        "--only", default="decode,switch,prefill,peft", help="comma list of parts to run"
    )
    ap.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test, not a result")
    a = ap.parse_args()
    a.switch_ranks = [int(x) for x in a.switch_ranks.split(",") if x]
    only = set(a.only.split(","))
    a.hidden, a.intermediate, a.heads, a.kv_heads, a.vocab = 2048, 5632, 32, 4, 32000
    if a.quick:
        a.hidden, a.intermediate, a.heads, a.kv_heads, a.vocab = 128, 256, 4, 2, 512
        a.layers, a.reps, a.decode_tokens = 2, 2, 16
    res: dict = {
        "benchmark": "routing",
        "device": str(mx.default_device()),
        "mlx": mx.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "shape": {
            k: getattr(a, k)
            for k in ("hidden", "intermediate", "heads", "kv_heads", "vocab", "layers", "rank")
        },
        "dtype": "float32",
        "quick": a.quick,
        "load_before": load(),
    }
    model = random_llama(model_config(a))
    adapters = make_adapters(model, 4, a.rank, a.layers)
    for name, fn in (
        ("decode", bench_decode),
        ("switch", bench_switch),
        ("prefill", bench_prefill),
    ):
        if name not in only:
            continue
        res[name] = fn(model, adapters, a)
        res[name]["load"] = load()
        if name == "switch":  # the same switch at other ranks (more GEMM work per switch)
            res[name]["other_ranks"] = {
                r: bench_switch(model, make_adapters(model, 4, r, a.layers), a)
                for r in a.switch_ranks
                if r != a.rank
            }
        print(name, json.dumps(res[name]), file=sys.stderr)
    if not a.no_peft and "peft" in only:
        res["peft"] = bench_peft(adapters, a)
        res["peft"]["load"] = load()
        if "mixed_adapter_names_s" in res["peft"] and "prefill" in res:
            res["peft"]["ours_mixed_vs_peft_mixed_speedup"] = round(
                res["peft"]["mixed_adapter_names_s"]
                / res["prefill"][f"mixed_{res['prefill']['backend']}_s"],
                3,
            )
        print("peft", json.dumps(res["peft"]), file=sys.stderr)
    checks = {
        "decode": ("decode_ratio>=0.97", lambda r: r >= 0.97),
        "switch": ("switch_ratio<=1.5", lambda r: r <= 1.5),
        "prefill": ("prefill_ratio>=0.8", lambda r: r >= 0.8),
    }
    res["targets_met"] = {key: ok(res[n]["ratio"]) for n, (key, ok) in checks.items() if n in res}
    res["load_after"] = load()
    write_json(Path(a.out), res)
    print(json.dumps(res["targets_met"]))


if __name__ == "__main__":
    main()
