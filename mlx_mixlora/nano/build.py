"""`build_nano_base`: tokenizer + pretraining + a model dir like a converted TinyLlama.

The output has config.json (HF Llama fields), model.safetensors (mlx-lm's
`save_model`), tokenizer files, a README model card and mixlora_source.json,
so every command treats it exactly like a converted hub checkpoint. Builds are
cached under the user cache dir, keyed by the recipe's hash.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
from tqdm import tqdm

from .. import __version__
from ..errors import MixloraError
from ..io import atomic_dir, output_path, write_json
from .corpus import pretraining_docs, tokenizer_texts
from .pretrain import build_model, model_args, pack, pretrain
from .recipe import NanoRecipe, cached_path
from .tokenizer import EOS, save_tokenizer, train_bpe

SOURCE = "nano-synthetic"


def is_complete(path: Path) -> bool:
    """A finished build has all its files (atomic writes make partial dirs impossible)."""
    needed = ("config.json", "model.safetensors", "tokenizer.json", "mixlora_source.json")
    return path.is_dir() and all((path / f).is_file() for f in needed)


def ensure_nano_base(
    recipe: NanoRecipe | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The cached nano base for `recipe`, building it on first use."""
    recipe = recipe or NanoRecipe()
    path = cached_path(recipe)
    if is_complete(path):
        if log:
            log(f"using cached nano base {path}")
        return path
    if log:
        log(f"building nano base (first run) into {path}")
    return build_nano_base(path, recipe, progress=progress, overwrite=path.exists())


def build_nano_base(
    out_dir: str | Path,
    recipe: NanoRecipe | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train the tokenizer, pretrain the model and write the model dir atomically."""
    from mlx_lm.utils import save_config, save_model  # loads transformers (and torch): seconds

    recipe = recipe or NanoRecipe()
    out_dir = Path(out_dir)
    output_path(out_dir, overwrite)  # before minutes of training
    t0 = time.perf_counter()
    docs = pretraining_docs(
        recipe.corpus_rows_per_task,
        recipe.seed,
        recipe.format_share,
        recipe.repeat_share,
    )
    tok = train_bpe(tokenizer_texts(docs), recipe.vocab_size)
    if tok.get_vocab_size() > recipe.vocab_size:
        raise MixloraError(
            f"tokenizer has {tok.get_vocab_size()} tokens > vocab_size {recipe.vocab_size}"
        )
    stream = pack([e.ids for e in tok.encode_batch(docs)], tok.token_to_id(EOS))
    t_tok = time.perf_counter() - t0

    model = build_model(recipe)
    bar = tqdm(total=recipe.steps, desc="pretrain nano base", disable=not progress, unit="step")

    def on_step(i: int, loss: float) -> None:
        bar.update(1)
        if i % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    losses = pretrain(model, stream, recipe, on_step=on_step)
    bar.close()
    mx.eval(model.parameters())
    t_total = time.perf_counter() - t0

    config = model_args(recipe)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_model(tmp, model)
        save_config(dict(config), tmp / "config.json")
        save_tokenizer(tok, tmp, model_max_length=recipe.max_position_embeddings)
        stats = {
            "corpus_docs": len(docs),
            "corpus_tokens": int(len(stream)),
            "tokenizer_vocab": tok.get_vocab_size(),
            "first_loss": round(losses[0], 4),
            "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "tokenizer_seconds": round(t_tok, 1),
            "build_seconds": round(t_total, 1),
        }
        write_json(
            tmp / "mixlora_source.json",
            {
                "source": SOURCE,
                "recipe": recipe.to_dict(),
                "recipe_key": recipe.key(),
                "stats": stats,
                "built_with": f"mlx-mixlora {__version__}",
            },
        )
        (tmp / "README.md").write_text(_model_card(recipe, stats))
    return out_dir


def _model_card(recipe: NanoRecipe, stats: dict) -> str:
    n_params = _param_count(recipe)
    return (
        "# nano base (mlx-mixlora)\n\n"
        "A small Llama (TinyLlama's architecture: GQA, RoPE, SwiGLU, RMSNorm) pretrained by\n"
        "`mixlora base build` on unlabeled synthetic text, so the whole pipeline runs offline.\n"
        "Its corpus holds the tasks' texts and, for a share of them, the task prompt with a\n"
        "random answer: it knows the answer format but not the tasks (near chance).\n\n"
        f"- parameters: {n_params / 1e6:.2f} M\n"
        f"- layers {recipe.num_hidden_layers}, hidden {recipe.hidden_size}, "
        f"{recipe.num_attention_heads} heads / {recipe.num_key_value_heads} KV heads, "
        f"intermediate {recipe.intermediate_size}, vocab {recipe.vocab_size} (byte-level BPE)\n"
        f"- pretraining: {recipe.steps} steps × {recipe.batch_size} × {recipe.seq_len} tokens, "
        f"loss {stats['first_loss']} → {stats['final_loss']}, {stats['build_seconds']} s\n\n"
        "```json\n" + json.dumps(recipe.to_dict(), indent=2) + "\n```\n"
    )


def _param_count(r: NanoRecipe) -> int:
    head_dim = r.hidden_size // r.num_attention_heads
    attn = 2 * r.hidden_size * r.hidden_size + 2 * r.hidden_size * r.num_key_value_heads * head_dim
    mlp = 3 * r.hidden_size * r.intermediate_size
    per_layer = attn + mlp + 2 * r.hidden_size
    return r.num_hidden_layers * per_layer + 2 * r.vocab_size * r.hidden_size + r.hidden_size
