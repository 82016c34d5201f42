"""The GEMM part of a LoRA training step: which products, their FLOPs, their time alone.

`benchmarks/train_throughput.py` times a step's products one by one in each
peer's framework and subtracts them from its step time: the rest (elementwise
work, softmax, cross-entropy, copies, dispatch) is what differs between stacks
whose BLAS runs at the same rate.
"""

from __future__ import annotations

from collections.abc import Callable

from .timing import repeat


def train_step_gemms(config: dict, batch: int, seq: int) -> list[dict]:
    """The matrix products of one LoRA training step on a Llama, for the GEMM share of a step.

    Base projections forward (x @ W.T) and their input gradient (dy @ W), the LM
    head both ways, attention's QKᵀ and PV forward and their four backward
    products (batched over batch × heads). Not listed: the rank-r LoRA products
    (r / hidden of the work, < 0.5 % at r 8) and layer 0's q/k/v input gradient,
    which nobody computes (the embeddings are frozen). `ta`/`tb`: the operand is
    used transposed, as the frameworks pass it to the BLAS.
    """
    t, h, i = batch * seq, config["hidden_size"], config["intermediate_size"]
    nh, nkv, v = config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]
    d = h // nh
    layers = config["num_hidden_layers"]
    out: list[dict] = []

    def add(name, m, n, k, count, ta=False, tb=False, batched=1):
        out.append(dict(name=name, m=m, n=n, k=k, ta=ta, tb=tb, batch=batched, count=count))

    for name, n_out, n_in in (
        ("q_proj", h, h),
        ("k_proj", nkv * d, h),
        ("v_proj", nkv * d, h),
        ("o_proj", h, h),
        ("gate_proj", i, h),
        ("up_proj", i, h),
        ("down_proj", h, i),
    ):
        add(f"{name} forward", t, n_out, n_in, layers, tb=True)
        first_needs_grad = name not in ("q_proj", "k_proj", "v_proj")
        add(f"{name} input grad", t, n_in, n_out, layers - (not first_needs_grad))
    add("lm_head forward", t, v, h, 1, tb=True)
    add("lm_head input grad", t, h, v, 1)
    bh = batch * nh
    add("attention q·kᵀ", seq, seq, d, layers, tb=True, batched=bh)
    add("attention p·v", seq, d, seq, layers, batched=bh)
    add("attention dp = do·vᵀ", seq, seq, d, layers, tb=True, batched=bh)
    add("attention dv = pᵀ·do", seq, d, seq, layers, ta=True, batched=bh)
    add("attention dq = ds·k", seq, d, seq, layers, batched=bh)
    add("attention dk = dsᵀ·q", seq, d, seq, layers, ta=True, batched=bh)
    return out


def gemm_flops(g: dict) -> float:
    """Floating-point operations of one entry of `train_step_gemms`, all its calls."""
    return 2.0 * g["m"] * g["n"] * g["k"] * g["batch"] * g["count"]


def gemm_share(gemms: list[dict], seconds: list[float], step_seconds: float) -> dict:
    """The GEMM and non-GEMM part of a step: `seconds[j]` is one timed call of `gemms[j]`."""
    flops = sum(gemm_flops(g) for g in gemms)
    gemm_s = sum(s * g["count"] for g, s in zip(gemms, seconds, strict=True))
    return {
        "gemm_gflop_per_step": round(flops / 1e9, 1),
        "gemm_seconds_per_step": round(gemm_s, 3),
        "gemm_gflops_measured": round(flops / gemm_s / 1e9, 1),
        "step_seconds": round(step_seconds, 3),
        "non_gemm_seconds": round(step_seconds - gemm_s, 3),
        "non_gemm_share": round((step_seconds - gemm_s) / step_seconds, 3),
        "per_gemm_ms": {g["name"]: round(s * 1e3, 2) for g, s in zip(gemms, seconds, strict=True)},
    }


def time_gemms(gemms: list[dict], product: Callable[[dict], Callable[[], object]]) -> list[float]:
    """Seconds of one call of each `spec.train_step_gemms` entry, each distinct shape timed once.

    `product(g)` builds that entry's operands in the peer's framework and returns
    a thunk that runs (and waits for) the product. Best of 3 after a warm-up; for
    products over 10 GFLOP (seconds each on a CPU) best of 3 with no separate
    warm-up: with one timing of the LM head's products (~40% of a step's GEMM time),
    three runs here gave torch+PEFT's non-GEMM share as 0.001, 0.12 and 0.21.
    """
    seen: dict[tuple, float] = {}
    out = []
    for g in gemms:
        key = (g["m"], g["n"], g["k"], g["ta"], g["tb"], g["batch"])
        if key not in seen:
            big = 2.0 * g["m"] * g["n"] * g["k"] * g["batch"] > 10e9
            seen[key] = min(repeat(product(g), 3, warmup=0 if big else 1))
        out.append(seen[key])
    return out


def mlx_product(g: dict, streams: int = 1):
    """A `time_gemms` thunk: entry `g` on MLX's CPU as a step with `streams` CPU streams runs it.

    With several streams (our trainer's split step, `train.parallel`) each stream
    multiplies its share of the rows (of the batch, for attention) by the shared
    operand, all at once; the caller sets OpenBLAS to one thread, as the trainer does.
    """
    import mlx.core as mx

    split_batch = g["batch"] > 1
    lead = (g["batch"] // streams,) if split_batch else ()
    m = g["m"] if split_batch else g["m"] // streams

    def operand(rows, cols, transposed, batch=lead):
        x = mx.random.normal((*batch, *((cols, rows) if transposed else (rows, cols))))
        mx.eval(x)
        return x.swapaxes(-1, -2) if transposed else x

    a = [operand(m, g["k"], g["ta"]) for _ in range(streams)]
    shared = operand(g["k"], g["n"], g["tb"], lead if split_batch else ())
    b = [operand(g["k"], g["n"], g["tb"]) if split_batch else shared for _ in range(streams)]
    if streams == 1:
        return lambda: mx.eval(a[0] @ b[0])
    cpu = [mx.new_stream(mx.cpu) for _ in range(streams)]
    return lambda: mx.eval(*(mx.matmul(x, y, stream=s) for x, y, s in zip(a, b, cpu, strict=True)))


def mlx_seconds(gemms: list[dict], streams: int = 1) -> list[float]:
    """Seconds of one call of each of `gemms` with MLX (import mlx_mixlora first: the BLAS).

    `streams` > 1: split over that many CPU streams with one OpenBLAS thread each,
    the way our trainer's step runs them.
    """
    if streams == 1:
        return time_gemms(gemms, mlx_product)
    from ..cpu.streams import blas_threads

    with blas_threads(1):
        return time_gemms(gemms, lambda g: mlx_product(g, streams))
