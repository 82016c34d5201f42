"""M1 reference limits, so a Mac user can see how close a run gets.

Decode is memory-bound: each token reads every weight once (the embedding table
excepted: one row), so tokens/s ≤ bandwidth / weight bytes; M1: 68 GB/s, fp16.
LoRA training is compute-bound: forward 2·P plus backward input gradients 2·P
FLOPs per token (frozen weights need no weight-gradient GEMMs), so tokens/s ≤
peak / (4·P); M1 GPU: 2.6 TFLOP/s fp32. For TinyLlama (1.1 B params) these are
the issue's ~33 decode tokens/s and ~590 training tokens/s.
"""

from __future__ import annotations

M1_BANDWIDTH = 68e9  # bytes/s, M1 unified memory
M1_FP32_FLOPS = 2.6e12  # M1 8-core GPU, fp32 peak


def param_count(config: dict) -> dict:
    """Parameters of a Llama config: total and the part read per decoded token."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = (
        h
        // config["num_attention_heads"]
        * config.get("num_key_value_heads", config["num_attention_heads"])
    )
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    embed = v * h
    head = 0 if config.get("tie_word_embeddings") else v * h
    total = embed + config["num_hidden_layers"] * layer + h + head
    return {"total": total, "read_per_token": total - embed + (embed if not head else 0)}


def m1_limits(config: dict) -> dict:
    p = param_count(config)
    return {
        "params": p["total"],
        "decode_fp16_tokens_per_s": M1_BANDWIDTH / (2 * p["read_per_token"]),
        "lora_train_fp32_tokens_per_s": M1_FP32_FLOPS / (4 * p["total"]),
        "assumptions": "decode: fp16 weights read once per token at 68 GB/s (embedding table "
        "not read); LoRA training: 4·params FLOPs per token at 2.6 TFLOP/s fp32",
    }
