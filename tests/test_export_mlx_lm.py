"""`mixlora export mlx-lm`: mlx-lm itself loads the export and gives our logits."""

from __future__ import annotations

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload must come before mlx.core)

# isort: on
import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from helpers_train import save_model_dir, tiny_model

from mlx_mixlora.adapter_format import AdapterConfig, load_adapter, save_adapter
from mlx_mixlora.cli import main
from mlx_mixlora.lora import load_adapter_into
from mlx_mixlora.model import base_identity, load_model
from mlx_mixlora.train import TrainConfig, train_adapter

IDS = [[1, 5, 9, 3, 17, 22, 8, 40, 13, 6, 30]]
ROWS = [{"prompt": f"abc {i} =", "completion": f" {i % 5}"} for i in range(16)]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_model_dir(tmp_path_factory.mktemp("mlxlm") / "base", tiny_model(0))


def _trained(base, out, **kw):
    cfg = TrainConfig(rank=4, alpha=8, iters=6, batch_size=4, max_seq_len=64, lr=2e-2, **kw)
    train_adapter(base, ROWS, out, cfg, progress=False)
    return out


def our_logits(base, adapter=None):
    model, _ = load_model(base)
    if adapter is not None:
        load_adapter_into(model, adapter, base=base_identity(base))
    return np.array(model(mx.array(IDS)))


def mlx_lm_logits(base, adapter):
    import mlx_lm

    model, _ = mlx_lm.load(str(base), adapter_path=str(adapter))
    return np.array(model(mx.array(IDS)))


@pytest.mark.parametrize(
    "options",
    [
        dict(targets=["q_proj", "k_proj", "v_proj", "o_proj"]),  # every layer
        dict(
            targets=["q_proj", "v_proj", "gate_proj", "down_proj"], layers="last:1", use_rslora=True
        ),
    ],
)
def test_mlx_lm_loads_the_export_with_our_logits(base, tmp_path, options):
    import mlx_lm

    ours_dir = _trained(base, tmp_path / "ours", **options)
    out = tmp_path / "for-mlx-lm"
    result = cli("export", "mlx-lm", ours_dir, "-o", out)
    assert result.exit_code == 0, result.output
    cfg, _ = load_adapter(ours_dir)
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["fine_tune_type"] == "lora" and written["num_layers"] == len(cfg.layers)
    scale = cfg.alpha / (2.0 if cfg.use_rslora else 4.0)  # alpha/sqrt(r) or alpha/r, r = 4
    assert written["lora_parameters"]["scale"] == scale
    ours = our_logits(base, ours_dir)
    assert np.abs(ours - our_logits(base)).max() > 1e-3  # the adapter changes the output
    assert np.abs(mlx_lm_logits(base, out) - ours).max() <= 1e-5
    model, tok = mlx_lm.load(str(base), adapter_path=str(out))
    text = mlx_lm.generate(model, tok, prompt="abc 3 =", max_tokens=4)
    assert isinstance(text, str)


@pytest.mark.slow
def test_mlx_lm_generate_and_fuse_commands_take_the_export(base, tmp_path):
    ours_dir = _trained(base, tmp_path / "ours")
    out = tmp_path / "x"
    assert cli("export", "mlx-lm", ours_dir, "-o", out).exit_code == 0
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "mlx_lm", *map(str, a)], capture_output=True, text=True, timeout=300
    )
    gen = run("generate", "--model", base, "--adapter-path", out, "--prompt", "abc 3 =",
              "--max-tokens", "4", "--temp", "0")  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    fuse = run("fuse", "--model", base, "--adapter-path", out, "--save-path", tmp_path / "fused")
    assert fuse.returncode == 0, fuse.stderr
    fused = np.array(load_model(tmp_path / "fused")[0](mx.array(IDS)))
    assert np.abs(fused - our_logits(base, ours_dir)).max() <= 1e-5


def _random_adapter(base, out, layers=(0, 1), rank_pattern=None, known_base=True):
    cfg = AdapterConfig(rank=4, alpha=8.0, targets=["q_proj", "v_proj"], layers=list(layers),
                        rank_pattern=rank_pattern or {},
                        base_model=base_identity(base) if known_base else {})  # fmt: skip
    rng = np.random.default_rng(0)
    weights = {}
    for p in cfg.module_paths():
        r, out_dim = cfg.rank_of(p), 64 if p.endswith("q_proj") else 32
        weights[f"{p}.lora_a"] = mx.array(rng.standard_normal((r, 64)).astype(np.float32))
        weights[f"{p}.lora_b"] = mx.array(rng.standard_normal((out_dim, r)).astype(np.float32))
    return save_adapter(out, cfg, weights)


@pytest.mark.parametrize(
    "kind, match",
    [
        ("first layer", "LoRA on the last N of the base's 2 layers; this adapter has layers [0]"),
        ("ranks", "one rank for every module; this one has ranks [2, 4]"),
        ("unknown base", "does not record its base's layer count"),
    ],
)
def test_what_mlx_lm_cannot_express_is_one_error(base, tmp_path, kind, match):
    options = {
        "first layer": dict(layers=[0]),
        "ranks": dict(rank_pattern={"model.layers.1.self_attn.q_proj": 2}),
        "unknown base": dict(known_base=False),
    }[kind]
    adapter = _random_adapter(base, tmp_path / "ad", **options)
    result = cli("export", "mlx-lm", adapter, "-o", tmp_path / "out")
    assert result.exit_code != 0 and match in result.output, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "ad"]  # no temp dir left either
