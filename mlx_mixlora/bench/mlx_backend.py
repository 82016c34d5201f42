"""Our package on MLX's default device (Metal → CUDA → CPU): every workload.

train: `train.train_adapter` (own LoRA layers, compiled step); prefill: a base
forward, and with `lora.attach_lora` (unfused); decode: mlx-lm's `generate_step`
on the base, with one adapter fused (`route.fused`), and routed (the gate picks,
`fused` fuses); merge: `merge.merge_adapters`; route: a mixed-adapter batch
(`route.attach_mixed` + `mixed_forward`).
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx_mixlora  # noqa: F401  # isort: skip  (BLAS preload before mlx.core)
import mlx.core as mx
import numpy as np
from mlx_lm.generate import generate_step

from ..adapter_format import load_adapter, load_adapters, read_adapter
from ..cpu.system import device_name
from ..lora import attach_lora, detach_lora
from ..merge import merge_adapters
from ..model import load_model
from ..route import (
    Decision,
    GateConfig,
    GateMLP,
    GateRouter,
    attach_mixed,
    decide,
    detach_mixed,
    feature_layer,
    fused,
    mixed_forward,
)
from ..train import TrainConfig, train_adapter
from .rows import row, train_row
from .spec import BENCH_MERGES, MERGE_CASES, MERGE_WEIGHTS, TARGETS, BenchSpec, Sizes
from .timing import max_rss_gb, repeat, train_summary


class IntTokenizer:
    """Text of space-separated ids → ids; no BOS/EOS so every peer sees the same tokens."""

    eos_token_id = None
    bos_token_id = None
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(x) for x in text.split()]


def _peak_gb() -> float:
    return mx.get_peak_memory() / 2**30


def _mem(fn):
    """Run `fn` with MLX's peak-memory counter reset; return (result, peak GB)."""
    mx.reset_peak_memory()
    out = fn()
    return out, _peak_gb()


def load_fp32(model_dir: str | Path):
    """(model, config) in fp32, as training runs (a no-op for fp32 models)."""
    model, config = load_model(model_dir)
    model.set_dtype(mx.float32)
    return model, config


def train_ours(model_dir: str | Path, data: dict, workload: str = "a", sizes: Sizes = Sizes(),
               pack: bool = False) -> dict:  # fmt: skip
    """LoRA training with our trainer; data: {"a": rows of ids} or {"b": [[prompt, answer]]}."""
    model, _ = load_fp32(model_dir)
    mx.reset_peak_memory()
    common = dict(rank=sizes.rank, alpha=sizes.alpha, targets=TARGETS, lr=sizes.lr, clip_grad=None,
                  seed=0)  # fmt: skip
    if workload == "a":
        exs = [{"text": " ".join(map(str, ids))} for ids in data["a"]]
        seq = len(data["a"][0])
        cfg = TrainConfig(iters=len(exs) // 4, batch_size=4, max_seq_len=seq, **common)
    else:
        exs = [
            {"prompt": " ".join(map(str, p)), "completion": " ".join(map(str, c))}
            for p, c in data["b"]
        ]
        cfg = TrainConfig(
            epochs=1,
            batch_size=4,  # examples a step, packed or not (packing only removes padding)
            max_seq_len=512,
            pack=pack,
            mask_prompt=True,
            **common,
        )
    res = train_adapter((model, IntTokenizer()), exs, None, cfg, progress=False)
    hist = res.history
    out = train_summary(
        [h["tokens"] for h in hist], [h["seconds"] for h in hist], [h["cpu_seconds"] for h in hist]
    )
    out.update(
        peak_mlx_memory_gb=round(_peak_gb(), 3),
        max_rss_gb=round(max_rss_gb(), 3),
        final_loss=res.train_loss,
        config={"batch_size": cfg.batch_size, "max_seq_len": cfg.max_seq_len, "pack": cfg.pack},
    )
    return out


def warm_runs(fn, sizes: Sizes) -> tuple[list[float], float]:
    """`fn()`'s own figures over `sizes.repeats` runs after `sizes.warmup`, and MLX's peak GB."""
    mx.reset_peak_memory()
    for _ in range(sizes.warmup):
        fn()
    return [fn() for _ in range(sizes.repeats)], _peak_gb()


def load_spec_model(spec: BenchSpec):
    model, _ = load_model(spec.model_dir)
    if spec.dtype != "float32":
        model.set_dtype(getattr(mx, spec.dtype))
    mx.eval(model.parameters())
    return model


def decode_tps(model, prompt: mx.array, n: int) -> float:
    """Decode tokens/s after the first token (mlx-lm's `generation_tps`), greedy."""
    steps = generate_step(prompt, model, max_tokens=n)
    next(steps)  # prefill + first token
    t = time.perf_counter()
    k = sum(1 for _ in steps)
    return k / (time.perf_counter() - t)


def run(workload: str, spec: BenchSpec, enabled: set[str]) -> list[dict]:
    return {
        "train": _train,
        "prefill": _prefill,
        "decode": _decode,
        "merge": _merge,
        "route": _route,
    }[workload](spec)


def _common(spec: BenchSpec) -> dict:
    return {"device": device_name(), "dtype": spec.dtype}


def _train(spec: BenchSpec) -> list[dict]:
    r = train_ours(spec.model_dir, {"a": spec.arrays()["train"].tolist()}, "a", spec.sizes)
    return [train_row("mlx", "mlx_mixlora.train (fp32)", r, r["peak_mlx_memory_gb"], "mlx peak",
                      **_common(spec))]  # fmt: skip


def _prefill(spec: BenchSpec) -> list[dict]:
    s = spec.sizes
    model = load_spec_model(spec)
    batch = mx.array(spec.arrays()["prefill"])
    ntok = batch.size

    def timed():
        return repeat(lambda: mx.eval(model(batch)), s.repeats, s.warmup)

    base, peak = _mem(timed)
    rows = [row("prefill", "base", "mlx", "tokens_per_s", [ntok / t for t in base],
                "mlx-lm Llama forward", peak, "mlx peak", **_common(spec))]  # fmt: skip
    cfg, w = load_adapter(spec.adapters[0])
    attach_lora(model, cfg, w)
    ad, peak = _mem(timed)
    detach_lora(model)
    rows.append(row("prefill", "adapter", "mlx", "tokens_per_s", [ntok / t for t in ad],
                    "mlx_mixlora.lora LoRALinear (unfused)", peak, "mlx peak", **_common(spec)))  # fmt: skip
    return rows


def _decode(spec: BenchSpec) -> list[dict]:
    s = spec.sizes
    model = load_spec_model(spec)
    prompt = mx.array(spec.arrays()["decode"].tolist())
    adapters = load_adapters(spec.adapters)
    n = s.decode_tokens

    base, pb = warm_runs(lambda: decode_tps(model, prompt, n), s)

    def fused_once():
        with fused(model, adapters, Decision([0], [1.0], [])):
            return decode_tps(model, prompt, n)

    fz, pf = warm_runs(fused_once, s)
    mx.random.seed(0)
    hidden = spec.config["hidden_size"]
    gate = GateMLP(hidden, 64, len(adapters))
    gate_cfg = GateConfig(
        layer=feature_layer(model, adapters),
        hidden_size=hidden,
        gate_hidden=64,
        adapters=[a.identity() for a in adapters],
    )
    router = GateRouter(gate, gate_cfg)
    overhead: list[float] = []
    tokens = [prompt.tolist()]

    def routed_once():
        t = time.perf_counter()
        d = decide(np.asarray(router.probs(model, tokens)), "top1")[0]
        with fused(model, adapters, d):
            overhead.append(time.perf_counter() - t)
            return decode_tps(model, prompt, n)

    rt, pr = warm_runs(routed_once, s)
    c = _common(spec)
    kw = {"prompt_tokens": int(prompt.size), "decode_tokens": n}
    return [
        row("decode", "base", "mlx", "tokens_per_s", base, "mlx-lm generate_step", pb, "mlx peak", **c, **kw),
        row("decode", "fused", "mlx", "tokens_per_s", fz, "route.fused (fuse_deltas) + generate_step", pf, "mlx peak", **c, **kw),
        row("decode", "routed", "mlx", "tokens_per_s", rt, "gate → decide → fused + generate_step", pr, "mlx peak", **c, **kw),
        row("decode", "route+fuse", "mlx", "seconds", overhead[s.warmup:], "gate pass + fuse_deltas, before decoding", None, None, **c),
    ]  # fmt: skip


def _merge(spec: BenchSpec) -> list[dict]:
    s = spec.sizes
    ours = [read_adapter(d) for d in spec.adapters]
    weights = MERGE_WEIGHTS[: len(ours)]
    rows = []
    for case in BENCH_MERGES:
        method, kw, _ = MERGE_CASES[case]
        kw = {**kw, "rank": s.rank} if "rank" in kw else kw
        times, peak = _mem(
            lambda m=method, k=kw: repeat(
                lambda: merge_adapters(ours, m, weights=weights, **k), s.repeats, s.warmup
            )
        )
        rows.append(row("merge", case, "mlx", "seconds", times,
                        f"merge_adapters({method!r}, {kw})", peak, "mlx peak", **_common(spec),
                        warmup=s.warmup))  # fmt: skip
    return rows


def _route(spec: BenchSpec) -> list[dict]:
    s = spec.sizes
    model = load_spec_model(spec)
    arr = spec.arrays()
    toks, idx = arr["route"].tolist(), arr["route_idx"].tolist()
    adapters = load_adapters(spec.adapters)
    attach_mixed(model, adapters)
    times, peak = _mem(
        lambda: repeat(lambda: mx.eval(mixed_forward(model, toks, idx)), s.repeats, s.warmup)
    )
    detach_mixed(model)
    ntok = sum(len(t) for t in toks)
    return [
        row("route", "mixed", "mlx", "tokens_per_s", [ntok / t for t in times],
            "route.attach_mixed + mixed_forward", peak, "mlx peak", **_common(spec),
            prompts=len(toks), adapters_in_batch=len(set(idx)))
    ]  # fmt: skip
