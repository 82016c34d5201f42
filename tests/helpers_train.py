"""Fixtures for LoRA/trainer tests: tiny Llama models and a char-level tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload must come before mlx.core)
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models import llama

# isort: on

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;?!=+-*()'\"\n"


def tiny_args(**kw) -> llama.ModelArgs:
    base = dict(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=64,
        tie_word_embeddings=False,
    )
    base.update(kw)
    return llama.ModelArgs(**base)


def tiny_model(seed: int = 0, **kw) -> llama.Model:
    mx.random.seed(seed)
    model = llama.Model(tiny_args(**kw))
    mx.eval(model.parameters())
    return model


class CharTokenizer:
    """Ids: 0 pad, 1 BOS, 2 EOS, then one id per character in CHARS."""

    bos_token_id = 1
    eos_token_id = 2
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [3 + CHARS.index(c) for c in text.lower() if c in CHARS]
        return ([1] if add_special_tokens else []) + ids

    def decode(self, ids) -> str:
        return "".join(CHARS[i - 3] for i in ids if 3 <= i < 3 + len(CHARS))


def save_model_dir(
    path: Path, model: llama.Model | None = None, seed: int = 0, chars: str = CHARS
) -> Path:
    """Write an MLX model dir (config, weights, a char-level HF tokenizer over `chars`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    model = model or tiny_model(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    args = model.args
    cfg = {k: v for k, v in vars(args).items() if v is not None and not k.startswith("_")}
    (path / "config.json").write_text(json.dumps(cfg))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: 3 + i for i, c in enumerate(chars)}}
    assert len(vocab) <= args.vocab_size
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(str(path))
    return path


def tiny_bpe_llama(path: Path, seed: int):
    """A random tiny Llama with a 400-token BPE tokenizer trained on the synthetic texts (saved in `path`)."""
    from mlx_lm.utils import load_tokenizer

    from mlx_mixlora.nano.corpus import pretraining_docs, tokenizer_texts
    from mlx_mixlora.nano.tokenizer import save_tokenizer, train_bpe

    save_tokenizer(train_bpe(tokenizer_texts(pretraining_docs(100, 0)), 400), path, 512)
    tokenizer = load_tokenizer(path)
    mx.random.seed(seed)
    model = llama.Model(tiny_args(vocab_size=400))
    mx.eval(model.parameters())
    return model, tokenizer


def reference_greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """Greedy text after `ids` by a plain argmax loop over the whole sequence (no cache,
    no batching): the reference the scoring code's batched decoding must equal."""
    ids, out = list(ids), []
    for _ in range(max_new_tokens):
        nxt = int(mx.argmax(model(mx.array([ids]))[0, -1]).item())
        if nxt == tokenizer.eos_token_id:
            break
        ids.append(nxt)
        out.append(nxt)
    return tokenizer.decode(out).split("\n")[0].strip()
