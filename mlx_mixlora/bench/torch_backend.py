"""PyTorch + transformers (+ PEFT) on torch's best device (mps → cuda → cpu).

Imported only inside the torch worker process: the core package never imports
torch. Rows are labelled `torch` (plain transformers, base model) or `peft`
(PEFT LoRA on top). Threads: `torch.set_num_threads(os.cpu_count())`.
Decode is a greedy loop with transformers' KV cache (what `generate` runs,
without its sampling machinery), timed after the first token.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from .gemm import time_gemms
from .rows import row, train_row
from .spec import BENCH_MERGES, MERGE_CASES, MERGE_WEIGHTS, TARGETS, BenchSpec, Sizes
from .timing import max_rss_gb, repeat, train_summary

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PEFT_PREFIX = "base_model.model."  # a PeftModel's module names: this + the base model's


def best_device() -> str:
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def blas_name() -> str:
    """torch's CPU BLAS as its build config reports it (MKL on x86 wheels, Accelerate on macOS)."""
    m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return m.group(1) if m else "unknown"


def setup_threads() -> int:
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> tuple[float, str]:
    """(GB, what it is): CUDA max allocated, MPS driver-allocated now, else process max RSS."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "cuda max allocated"
    if device == "mps":
        return torch.mps.driver_allocated_memory() / 2**30, "mps driver allocated"
    return max_rss_gb(), "process max RSS"


def random_torch_llama(config: dict, seed: int = 0) -> LlamaForCausalLM:
    """transformers' Llama (sdpa attention) for one of our config dicts, random weights."""
    cfg = {
        k: v for k, v in config.items() if k not in ("model_type", "quantization", "torch_dtype")
    }
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa"))


def lora_modules(model: PeftModel) -> list[tuple[str, torch.nn.Module]]:
    """(our module path, PEFT LoRA layer) for every adapted module of a PeftModel."""
    return [
        (n.removeprefix(PEFT_PREFIX), m) for n, m in model.named_modules() if hasattr(m, "lora_A")
    ]


def load_torch_model(model_dir: str | Path, dtype: str = "float32", device: str = "cpu"):
    """LlamaForCausalLM with the dir's safetensors (HF names: our MLX layout or an HF export)."""
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    model = random_torch_llama(cfg)
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if cfg.get("tie_word_embeddings") else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=DTYPES[dtype])


def train_peft(model_dir: str | Path, data: dict, workload: str = "a", sizes: Sizes = Sizes(),
               device: str = "cpu") -> dict:  # fmt: skip
    """PEFT LoRA training, fp32, AdamW, no clipping: the same examples as ours."""
    threads = setup_threads()
    torch.manual_seed(0)
    model = load_torch_model(model_dir, "float32", device)
    V = model.config.vocab_size
    model = get_peft_model(
        model,
        LoraConfig(r=sizes.rank, lora_alpha=sizes.alpha, target_modules=TARGETS, lora_dropout=0.0),
    )
    model.train()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=sizes.lr, weight_decay=0.0
    )
    if workload == "a":
        rows = torch.tensor(data["a"])
        batches = [
            (rows[i : i + 4, :-1], rows[i : i + 4, 1:], None) for i in range(0, len(rows), 4)
        ]
    else:  # length-sorted batches of 4, right-padded, loss on answers only
        exs = sorted(data["b"], key=lambda pc: len(pc[0]) + len(pc[1]))
        batches = []
        for i in range(0, len(exs) - 3, 4):
            group = exs[i : i + 4]
            L = max(len(p) + len(c) for p, c in group) - 1
            x = torch.zeros(len(group), L, dtype=torch.long)
            y = torch.full((len(group), L), -100, dtype=torch.long)
            n = 0
            for r, (p, c) in enumerate(group):
                ids = p + c
                x[r, : len(ids) - 1] = torch.tensor(ids[:-1])
                y[r, len(p) - 1 : len(ids) - 1] = torch.tensor(c)
                n += len(ids) - 1
            batches.append((x, y, n))
    reset_peak(device)
    times, cpus, toks, loss = [], [], [], None
    for x, y, n in batches:
        x, y = x.to(device), y.to(device)
        tic, cpu_tic = time.perf_counter(), time.process_time()
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, V).float(), y.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - tic)
        cpus.append(time.process_time() - cpu_tic)
        toks.append(x.numel() if n is None else n)
    out = train_summary(toks, times, cpus)
    peak, kind = peak_memory(device)
    out.update(
        max_rss_gb=round(max_rss_gb(), 3),
        peak_memory_gb=round(peak, 3),
        memory_kind=kind,
        final_loss=float(loss),
        config={"batch_size": 4, "threads": threads, "device": device},
    )
    return out


def gemm_seconds(gemms: list[dict], device: str = "cpu") -> list[float]:
    """Seconds of one call of each of `gemms` (see `gemm.train_step_gemms`) with torch, fp32."""
    setup_threads()

    def product(g: dict):
        lead = (g["batch"],) if g["batch"] > 1 else ()
        a = torch.randn(*lead, *((g["k"], g["m"]) if g["ta"] else (g["m"], g["k"])), device=device)
        b = torch.randn(*lead, *((g["n"], g["k"]) if g["tb"] else (g["k"], g["n"])), device=device)
        a, b = (a.transpose(-1, -2) if g["ta"] else a), (b.transpose(-1, -2) if g["tb"] else b)

        def run():
            with torch.no_grad():
                torch.matmul(a, b)
            sync(device)

        return run

    return time_gemms(gemms, product)


def decode_tps(model, ids: torch.Tensor, n: int, device: str) -> float:
    """Greedy decode with the KV cache; tokens/s after the first token."""
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        t = time.perf_counter()
        for _ in range(n - 1):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        tok.cpu()
        sync(device)
        return (n - 1) / (time.perf_counter() - t)


def run(workload: str, spec: BenchSpec, enabled: set[str]) -> list[dict]:
    """Rows for the enabled labels ("torch", "peft") of one workload."""
    device = best_device()
    threads = setup_threads()
    common = {"device": f"torch {device}", "dtype": spec.dtype, "threads": threads,
              "blas": blas_name()}  # fmt: skip
    s = spec.sizes
    arr = spec.arrays()
    rows: list[dict] = []

    def mem_row(case, backend, metric, values, impl, **kw):
        peak, kind = peak_memory(device)
        rows.append(row(workload, case, backend, metric, values, impl, peak, kind, **common, **kw))

    def timed(fn):
        def once():
            fn()
            sync(device)

        with torch.inference_mode():
            reset_peak(device)
            return repeat(once, s.repeats, s.warmup)

    def decode_runs(m) -> list[float]:
        """Decode tokens/s of `m` over the timed runs (warm-up runs dropped)."""
        reset_peak(device)
        v = [decode_tps(m, ids, s.decode_tokens, device) for _ in range(s.warmup + s.repeats)]
        return v[s.warmup :]

    if workload == "train":
        if "peft" in enabled:
            r = train_peft(spec.hf_dir, {"a": arr["train"].tolist()}, "a", s, device=device)
            rows.append(train_row("peft", "transformers + peft LoRA, AdamW (fp32)", r,
                                  r["peak_memory_gb"], r["memory_kind"], **common))  # fmt: skip
        return rows
    model = load_torch_model(spec.hf_dir, spec.dtype, device).eval()
    if workload == "prefill":
        ids = torch.tensor(arr["prefill"]).to(device)
        if "torch" in enabled:
            t = timed(lambda: model(input_ids=ids))
            mem_row("base", "torch", "tokens_per_s", [ids.numel() / x for x in t],
                    "transformers LlamaForCausalLM forward (sdpa)")  # fmt: skip
    if workload == "decode":
        ids = torch.tensor(arr["decode"])[None].to(device)
        if "torch" in enabled:
            mem_row("base", "torch", "tokens_per_s", decode_runs(model), "transformers, greedy + KV cache",
                    prompt_tokens=ids.shape[1], decode_tokens=s.decode_tokens)  # fmt: skip
    if "peft" not in enabled or workload == "train":
        return rows
    n_load = 1 if workload in ("prefill", "decode") else len(spec.peft_adapters)
    pm = PeftModel.from_pretrained(model, spec.peft_adapters[0], adapter_name="a0")
    for i in range(1, n_load):
        pm.load_adapter(spec.peft_adapters[i], adapter_name=f"a{i}")
    pm.eval()
    if workload == "prefill":
        t = timed(lambda: pm(input_ids=ids))
        mem_row("adapter", "peft", "tokens_per_s", [ids.numel() / x for x in t],
                "peft LoRA (unmerged)")  # fmt: skip
    elif workload == "decode":
        kw = {"prompt_tokens": ids.shape[1], "decode_tokens": s.decode_tokens}
        mem_row("adapter", "peft", "tokens_per_s", decode_runs(pm), "peft LoRA (unmerged)", **kw)
        pm.merge_adapter()
        v = decode_runs(pm)
        pm.unmerge_adapter()
        mem_row("fused", "peft", "tokens_per_s", v, "peft merge_adapter()", **kw)
    elif workload == "merge":
        names = [f"a{i}" for i in range(n_load)]
        weights = MERGE_WEIGHTS[:n_load]
        for case in BENCH_MERGES:
            pkw = MERGE_CASES[case][2]
            pkw = {**pkw, "svd_rank": s.rank} if "svd_rank" in pkw else pkw

            def merge_once(case=case, pkw=pkw):
                pm.add_weighted_adapter(names, weights, "m", combination_type=case, **pkw)
                pm.delete_adapter("m")

            reset_peak(device)
            t = repeat(merge_once, s.peft_merge_repeats, warmup=0)
            mem_row(case, "peft", "seconds", t, f"add_weighted_adapter({case!r}, {pkw})", warmup=0)
    elif workload == "route":
        ids = torch.tensor(arr["route"]).to(device)
        names = [f"a{i}" for i in arr["route_idx"].tolist()]
        t = timed(lambda: pm(input_ids=ids, adapter_names=names))
        mem_row("mixed", "peft", "tokens_per_s", [ids.numel() / x for x in t],
                "peft forward(adapter_names=...)", prompts=len(names),
                adapters_in_batch=len(set(names)))  # fmt: skip
    return rows
