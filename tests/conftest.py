"""Shared fixtures: tiny random Hugging Face Llama checkpoints built with transformers.

Nothing is downloaded: each fixture saves a freshly initialised LlamaForCausalLM
and a small word-level tokenizer into a temp dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlx_mixlora  # noqa: F401  (loads OpenBLAS before mlx.core)

WORDS = [f"w{i}" for i in range(240)]


def save_tiny_tokenizer(path: Path) -> None:
    """A word-level tokenizer with bos/eos/pad/unk, saved in the HF fast-tokenizer layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(str(path))


def make_hf_llama(
    path: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vocab: int = 256,
    tied: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    max_shard_size: str | None = None,
    safe: bool = True,
    tokenizer: bool = True,
    config_extra: dict | None = None,
) -> Path:
    """Save a random LlamaForCausalLM (and tokenizer) to `path`; returns `path`.

    `config_extra` overrides LlamaConfig arguments (RoPE forms, head_dim, biases).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg_kwargs = dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    if config_extra and "rope_parameters" in config_extra:
        del cfg_kwargs["rope_theta"]
    config = LlamaConfig(**{**cfg_kwargs, **(config_extra or {})})
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms start at 1.0, biases at 0; perturb them so parity checks see them
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(path), **kwargs)
    if not safe:  # a legacy pickle checkpoint, as older transformers wrote it
        for f in path.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    if tokenizer:
        save_tiny_tokenizer(path)
    return path


def hf_logits(path: Path, ids) -> object:
    """Reference logits from transformers in fp32 with eager attention."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.fixture
def tiny_hf_llama(tmp_path):
    """Factory fixture: `tiny_hf_llama(name="m", **kwargs) -> Path` of a saved HF checkpoint."""

    def factory(name: str = "hf", **kwargs) -> Path:
        return make_hf_llama(tmp_path / name, **kwargs)

    return factory


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
