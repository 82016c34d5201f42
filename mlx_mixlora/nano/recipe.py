"""The nano base recipe and where its build is cached.

The recipe fixes everything that determines the weights (architecture, corpus,
steps, seed, generator version), so its hash names the cache entry: a changed
recipe can never silently reuse an old build.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cache import cache_root
from ..tasks.synthetic import GENERATOR_VERSION

# Bump when the build code (tokenizer, corpus mix, training loop) changes the weights.
BUILD_VERSION = 3  # 3: format documents also in the tasks' train phrasings
# sha256 (first 16 hex) of the text this recipe's base is built from (`corpus.corpus_fingerprint`).
# The cache key holds only the recipe's fields, so a change to the synthetic generators, the task
# templates or the train phrasings would leave every cached base stale without a sound: a test
# pins this value, and whoever changes the corpus bumps BUILD_VERSION and updates it.
CORPUS_FINGERPRINT = "3e1884fb235163fa"


@dataclass(frozen=True)
class NanoRecipe:
    """TinyLlama's architecture (Llama, GQA, RoPE, SwiGLU, RMSNorm), shrunk."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int = 688
    vocab_size: int = 2048
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 240
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    corpus_rows_per_task: int = 6000
    format_share: float = 0.25
    repeat_share: float = 0.2
    seed: int = 0
    generator_version: int = GENERATOR_VERSION
    build_version: int = BUILD_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def cached_path(recipe: NanoRecipe) -> Path:
    return cache_root() / f"nano-{recipe.key()}"
