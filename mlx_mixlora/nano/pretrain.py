"""Full-parameter next-token pretraining of the nano base (compiled MLX step).

Documents are packed into one token stream (<s> doc </s> <s> doc ...) and
trained on random fixed-length windows: the simplest loop that turns a random
Llama into a model of the synthetic language in a few CPU minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from .recipe import NanoRecipe


def model_args(recipe: NanoRecipe) -> dict:
    """HF-style Llama config fields for the recipe (also what config.json holds)."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": recipe.hidden_size,
        "num_hidden_layers": recipe.num_hidden_layers,
        "num_attention_heads": recipe.num_attention_heads,
        "num_key_value_heads": recipe.num_key_value_heads,
        "head_dim": recipe.hidden_size // recipe.num_attention_heads,
        "intermediate_size": recipe.intermediate_size,
        "vocab_size": recipe.vocab_size,
        "max_position_embeddings": recipe.max_position_embeddings,
        "rms_norm_eps": recipe.rms_norm_eps,
        "rope_theta": recipe.rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        "torch_dtype": "float32",
    }


def build_model(recipe: NanoRecipe):
    """A randomly initialised mlx-lm Llama with the recipe's shapes (seeded)."""
    from mlx_lm.models import llama  # mlx_lm loads transformers (and torch): seconds

    mx.random.seed(recipe.seed)
    cfg = model_args(recipe)
    args = llama.ModelArgs.from_dict(cfg)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def pack(token_lists: list[list[int]], eos_id: int) -> np.ndarray:
    """Concatenate tokenized docs, each closed by </s>, into one int32 stream."""
    out = []
    for ids in token_lists:
        out.extend(ids)
        out.append(eos_id)
    return np.asarray(out, dtype=np.int32)


def pretrain(
    model,
    stream: np.ndarray,
    recipe: NanoRecipe,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `model` in place on windows of `stream`; returns the per-step losses."""
    L, B = recipe.seq_len, recipe.batch_size
    if len(stream) <= L + 1:
        raise ValueError(f"corpus of {len(stream)} tokens is shorter than one window ({L + 1})")
    warmup = min(recipe.warmup_steps, recipe.steps)
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(recipe.learning_rate / 10, recipe.learning_rate, max(warmup, 1)),
            optim.cosine_decay(
                recipe.learning_rate, max(recipe.steps - warmup, 1), recipe.learning_rate / 20
            ),
        ],
        [max(warmup, 1)],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=recipe.weight_decay)

    def loss_fn(m, x, y):
        logits = m(x)
        return nn.losses.cross_entropy(logits, y, reduction="mean")

    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(recipe.seed)
    starts_hi = len(stream) - L - 1
    losses = []
    model.train()
    for i in range(recipe.steps):
        starts = rng.integers(0, starts_hi, size=B)
        windows = np.stack([stream[s : s + L + 1] for s in starts])
        x, y = mx.array(windows[:, :-1]), mx.array(windows[:, 1:])
        loss = step(x, y)
        mx.eval(state, loss)
        losses.append(loss.item())
        if on_step is not None:
            on_step(i, losses[-1])
    model.eval()
    return losses
