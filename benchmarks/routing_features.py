"""Which routing features generalise to new wordings: layer × pooling × training prompts, as JSON.

On the nano base (the demo's, built and cached on first use), for every feature
layer L (0: token embeddings … n: last decoder layer) and pooling (mean of the
prompt's states, the last token's state, both concatenated), a gate and a
nearest-centroid router are fitted on 200 train-split prompts per task, in two
training styles: ``template`` (each task's one template; what the gate trained on
before) and ``varied`` (template plus the tasks' train phrasings). Each is scored
on 100 test-split prompts per task in the template, on the same rows in held-out
phrasings, and on the hand-written natural-request set. The default feature
(`route.feature_layer` / `route.DEFAULT_POOL`) is the one with the best held-out
phrasing accuracy.

Also times the routing cost of the chosen feature on the natural requests: the
feature pass plus the gate, against the base model's prefill of the same
prompts (one prompt at a time, as `generate` routes them), on the nano base and
on a random 22-layer TinyLlama-shaped model.

    python benchmarks/routing_features.py --out benchmarks/results/routing_features.json
"""

from __future__ import annotations

import argparse
import time

import mlx_mixlora  # noqa: F401  (OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import make_prompt_cache

from mlx_mixlora.bench.env import machine_record
from mlx_mixlora.bench.spec import TINYLLAMA, random_llama
from mlx_mixlora.bench.timing import repeat
from mlx_mixlora.io import write_json
from mlx_mixlora.model import load
from mlx_mixlora.nano import ensure_nano_base
from mlx_mixlora.route import CentroidRouter, RoutedPrefill, natural_prompts, prompt_features
from mlx_mixlora.route.gate import train_gate
from mlx_mixlora.tasks import BUILTIN_TASKS, load_examples

POOLINGS = ("mean", "last", "mean+last")
STYLES = ("template", "heldout", "natural")


def all_features(model, tok, prompts: list[str]) -> dict[tuple[int, str], np.ndarray]:
    """{(layer, pooling): [N, D]} from one pass per prompt over every layer."""
    inner = model.model
    out: dict[tuple[int, str], list] = {}
    for p in prompts:
        h = inner.embed_tokens(mx.array([list(tok.encode(p))]))
        states = [h]
        for layer in inner.layers:
            h = layer(h, create_attention_mask(h, None))
            states.append(h)
        for i, s in enumerate(states):
            v = s[0].astype(mx.float32)
            mean, last = v.mean(axis=0), v[-1]
            for pool, f in zip(POOLINGS, (mean, last, mx.concatenate([mean, last])), strict=True):
                out.setdefault((i, pool), []).append(np.array(f))
    return {k: np.stack(v) for k, v in out.items()}


def prompt_sets(train_style: str, seed: int) -> tuple[tuple[list, list], dict]:
    train: tuple[list, list] = ([], [])
    evals: dict[str, tuple[list, list]] = {s: ([], []) for s in STYLES}
    for i, t in enumerate(BUILTIN_TASKS):
        ex = load_examples(t, "synthetic", "train", n=200, seed=seed, prompts=train_style)
        train[0].extend(e["prompt"] for e in ex)
        train[1].extend([i] * len(ex))
        for style in ("template", "heldout"):
            ex = load_examples(t, "synthetic", "test", n=100, seed=seed, prompts=style)
            evals[style][0].extend(e["prompt"] for e in ex)
            evals[style][1].extend([i] * len(ex))
    evals["natural"] = natural_prompts([t.name for t in BUILTIN_TASKS])
    return train, evals


def sweep(model, tok, seed: int) -> list[dict]:
    rows = []
    for train_style in ("template", "varied"):
        (tr_p, tr_y), evals = prompt_sets(train_style, seed)
        f_train = all_features(model, tok, tr_p)
        f_eval = {s: all_features(model, tok, p) for s, (p, _) in evals.items()}
        y = np.asarray(tr_y)
        for layer, pool in sorted(f_train):
            gate, _ = train_gate(f_train[(layer, pool)], y, 4, seed=seed)
            centroid = CentroidRouter(f_train[(layer, pool)], y, 4, layer)
            for name, probs in (("gate", gate.probs), ("centroid", centroid.probs_from_features)):
                acc = {
                    s: float(
                        (
                            probs(f_eval[s][(layer, pool)]).argmax(1) == np.asarray(evals[s][1])
                        ).mean()
                    )
                    for s in STYLES
                }
                rows.append(
                    {"train_prompts": train_style, "layer": layer, "pool": pool, "router": name}
                    | acc
                )
                print(rows[-1], flush=True)
    return rows


def routing_cost(model, prompts: list[list[int]], layer: int, seed: int) -> dict:
    """What routing one prompt adds to its prefill, warm, best of 3 rounds over `prompts`.

    Routing is what `generate` runs per prompt: `RoutedPrefill.embed` (layers < L
    with the KV cache kept, then pooling) and the gate's forward. The prefill is
    the base model's forward over the prompt with a fresh KV cache, evaluated.
    """
    feats = prompt_features(model, prompts, layer)
    gate, _ = train_gate(feats, np.arange(len(prompts)) % 4, 4, steps=10, seed=seed)

    def route_all() -> None:
        for t in prompts:
            gate.probs(RoutedPrefill(model, t, layer).embed()[None])

    def prefill_all() -> None:
        for t in prompts:
            cache = make_prompt_cache(model)
            mx.eval(model(mx.array([t]), cache=cache), [c.state for c in cache])

    best = {
        name: min(repeat(fn, 3)) for name, fn in (("route", route_all), ("prefill", prefill_all))
    }
    return {
        "layers": len(model.model.layers),
        "hidden": model.args.hidden_size,
        "prompts": len(prompts),
        "mean_tokens": round(float(np.mean([len(t) for t in prompts])), 1),
        "feature_layer": layer,
        "route_s": best["route"],
        "prefill_s": best["prefill"],
        "route_over_prefill": best["route"] / best["prefill"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    model, tok = load(ensure_nano_base(progress=False))
    rows = sweep(model, tok, a.seed)
    gates = [r for r in rows if r["router"] == "gate" and r["train_prompts"] == "varied"]
    best = max(gates, key=lambda r: (r["heldout"], -r["layer"]))
    natural = [list(tok.encode(p)) for p in natural_prompts([t.name for t in BUILTIN_TASKS])[0]]
    costs = {"nano": routing_cost(model, natural, best["layer"], a.seed)}
    del model
    few = natural[:: max(1, len(natural) // 24)]  # the same token ids, fewer prompts
    # a random 22-layer TinyLlama-shaped model (what most users route on), fp32
    costs["tinyllama_shaped"] = routing_cost(random_llama(TINYLLAMA), few, best["layer"], a.seed)
    print(costs, flush=True)
    write_json(
        a.out,
        {
            "machine": machine_record(gemm=False),
            "seed": a.seed,
            "rows": rows,
            "best_by_heldout": best,
            "routing_cost": costs,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()
