"""What every backend runs on: one model, one adapter set, one seeded token set.

Without `--model` the model is TinyLlama-shaped with random weights and `layers`
decoder layers (said so in every output); with `--model DIR` it is that MLX
model dir, all of its layers. Torch gets the very same weights through
`convert.to_hf.export_hf`, PEFT the very same adapters through
`convert.peft.export_peft`. Token data are fixed, seeded integer arrays saved
once (`.npz`, no pickle) and read by every worker.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MixloraError

TINYLLAMA = dict(
    model_type="llama",
    hidden_size=2048,
    num_hidden_layers=22,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
    rms_norm_eps=1e-5,
    vocab_size=32000,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
)
TINY = dict(
    TINYLLAMA,
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
)
SHAPES = {"tinyllama": TINYLLAMA, "tiny": TINY}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
DTYPES = ("float32", "float16", "bfloat16")

# PEFT combination type -> (our method, our kwargs, PEFT kwargs): the same merge on both sides
MERGE_CASES = {
    "cat": ("cat", {}, {}),
    "svd": ("svd", {"rank": 8}, {"svd_rank": 8}),
    "ties_svd": ("ties", {"density": 0.2, "rank": 8}, {"density": 0.2, "svd_rank": 8}),
    "dare_ties_svd": ("dare_ties", {"drop": 0.5, "rank": 8}, {"density": 0.5, "svd_rank": 8}),
    "dare_linear_svd": ("dare_linear", {"drop": 0.5, "rank": 8}, {"density": 0.5, "svd_rank": 8}),
    "magnitude_prune_svd": ("magnitude_prune", {"density": 0.2, "rank": 8},
                            {"density": 0.2, "svd_rank": 8}),
    "linear": ("factor_linear", {}, {}),
    "ties": ("factor_ties", {"density": 0.2}, {"density": 0.2}),
}  # fmt: skip
BENCH_MERGES = ("cat", "svd", "ties_svd")  # what `mixlora bench merge` times
MERGE_WEIGHTS = [0.5, 0.3, 0.2]


@dataclass
class Sizes:
    """Workload sizes; `quick()` is for tests and smoke runs, not results."""

    rank: int = 8
    alpha: float = 16.0
    lr: float = 1e-4
    n_adapters: int = 3
    batch: int = 4
    seq: int = 256
    train_steps: int = 6  # the first is warm-up (compile), not timed
    prefill_batch: int = 4
    prefill_len: int = 256
    decode_prompt: int = 64
    decode_tokens: int = 64
    route_prompts: int = 6
    route_len: int = 64
    repeats: int = 3
    warmup: int = 1
    peft_merge_repeats: int = 2  # PEFT's SVD merges take ~30 s each here; eager torch: no warm-up

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            seq=32,
            train_steps=3,
            prefill_len=32,
            decode_prompt=16,
            decode_tokens=8,
            route_len=16,
            repeats=2,
        )


@dataclass
class BenchSpec:
    """Paths and sizes a worker needs; written as spec.json into the work dir."""

    model_dir: str
    config: dict
    source: str
    dtype: str
    sizes: Sizes
    data: str
    adapters: list[str] = field(default_factory=list)
    hf_dir: str | None = None
    peft_adapters: list[str] = field(default_factory=list)

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BenchSpec:
        return cls(**{**d, "sizes": Sizes(**d["sizes"])})

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> BenchSpec:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.data, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def shape_config(shape: str, layers: int | None) -> dict:
    if shape not in SHAPES:
        raise MixloraError(f"unknown shape {shape!r}; use {', '.join(SHAPES)} or --model DIR")
    cfg = dict(SHAPES[shape])
    if layers is not None:
        if layers < 1:
            raise MixloraError(f"--layers must be >= 1, got {layers}")
        cfg["num_hidden_layers"] = layers
    return cfg


def random_llama(config: dict, seed: int = 0):
    """mlx-lm's Llama with random weights (evaluated): speed depends on shapes, not values."""
    import mlx.core as mx
    from mlx_lm.models import llama

    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs(**config))
    mx.eval(model.parameters())
    return model


def random_model(path: Path, config: dict, seed: int = 0) -> Path:
    """A random fp32 model dir in MLX layout (mlx-lm's Llama; weights in HF names)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    path.mkdir(parents=True, exist_ok=True)
    params = random_llama(config, seed).parameters()
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(params)))
    (path / "config.json").write_text(json.dumps(config))
    return path


def random_adapters(model_dir: Path, config: dict, out: Path, sizes: Sizes) -> list[str]:
    """`n_adapters` rank-r adapters on q/k/v/o of every layer (`random_factors`)."""
    from ..adapter_format import AdapterConfig, save_adapter
    from ..model import base_identity

    base = base_identity(model_dir)
    hidden = config["hidden_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    dims = {"q_proj": (hidden, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden)}
    dims["o_proj"] = (hidden, hidden)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(sizes.n_adapters):
        cfg = AdapterConfig(
            rank=sizes.rank,
            alpha=sizes.alpha,
            targets=TARGETS,
            layers=list(range(config["num_hidden_layers"])),
            base_model=base,
            name=f"a{i}",
        )
        w = random_factors(cfg, lambda p: dims[p.rsplit(".", 1)[1]], rng)
        paths.append(str(save_adapter(out / f"a{i}", cfg, w)))
    return paths


def random_factors(cfg, shape_of, rng: np.random.Generator) -> dict:
    """LoRA factors for `cfg`'s modules, `shape_of(path)` = (out, in): A ~ N(0, 1/in), B ~ N(0, 0.01).

    B ≠ 0, so every adapter changes the model (PEFT's and our default init would not).
    """
    import mlx.core as mx

    w = {}
    for p in cfg.module_paths():
        o, k = shape_of(p)
        w[f"{p}.lora_a"] = mx.array(rng.normal(0, k**-0.5, (cfg.rank, k)).astype(np.float32))
        w[f"{p}.lora_b"] = mx.array(rng.normal(0, 0.01, (o, cfg.rank)).astype(np.float32))
    return w


def make_data(path: Path, vocab: int, sizes: Sizes, seed: int = 0) -> Path:
    """Seeded token ids (3..vocab-1, no specials) for every workload, as .npz."""
    rng = np.random.default_rng(seed)
    n_route = sizes.route_prompts
    np.savez(
        path,
        train=rng.integers(3, vocab, (sizes.batch * sizes.train_steps, sizes.seq + 1)),
        prefill=rng.integers(3, vocab, (sizes.prefill_batch, sizes.prefill_len)),
        decode=rng.integers(3, vocab, (sizes.decode_prompt,)),
        route=rng.integers(3, vocab, (n_route, sizes.route_len)),
        route_idx=np.arange(n_route) % sizes.n_adapters,
    )
    return path


def check_model_dir(model: str | Path) -> tuple[Path, dict]:
    """A real model dir: must load as one of ours (one clear error otherwise)."""
    from ..model import _require_model_dir

    path, config = _require_model_dir(model)
    if config.get("quantization"):
        raise MixloraError(f"{path} is quantized; benchmark an unquantized (fp16/fp32) model dir")
    return path, config


def check_model(
    shape: str, layers: int | None, model: str | Path | None, dtype: str
) -> tuple[Path | None, dict]:
    """The model a request names, checked before any work: (its dir or None for random, config)."""
    if dtype not in DTYPES:
        raise MixloraError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    if model is None:
        return None, shape_config(shape, layers)
    if layers is not None:
        raise MixloraError("--layers applies to the random model only; --model runs all layers")
    return check_model_dir(model)


def prepare(
    work: Path,
    sizes: Sizes,
    shape: str = "tinyllama",
    layers: int | None = None,
    model: str | Path | None = None,
    dtype: str = "float32",
    torch_files: bool = True,
) -> BenchSpec:
    """Write the model (random) or take `model`, the adapters, the data, and torch's copies."""
    model_dir, config = check_model(shape, layers, model, dtype)
    if model_dir is not None:
        source = f"real weights from {model_dir} ({config['num_hidden_layers']} layers)"
    else:
        model_dir = random_model(work / "model", config)
        source = (
            f"random weights, {shape}-shaped, {config['num_hidden_layers']} of "
            f"{SHAPES[shape]['num_hidden_layers']} layers (not a trained model)"
        )
    adapters = random_adapters(model_dir, config, work / "adapters", sizes)
    data = make_data(work / "data.npz", int(config["vocab_size"]), sizes)
    spec = BenchSpec(str(model_dir), config, source, dtype, sizes, str(data), adapters)
    if torch_files:
        from ..convert.peft import export_peft
        from ..convert.to_hf import export_hf

        spec.hf_dir = str(export_hf(model_dir, work / "hf"))
        spec.peft_adapters = [
            str(export_peft(a, work / "peft" / Path(a).name)) for a in spec.adapters
        ]
    return spec
