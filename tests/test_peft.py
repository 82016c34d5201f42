"""PEFT export/import with logit parity against PEFT and Transformers."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_mixlora.adapter_format import AdapterConfig, load_adapter, save_adapter
from mlx_mixlora.cli import main

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

IDS = [[1, 17, 5, 99, 42, 7, 200, 3, 64, 128, 11, 250]]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def base(tiny_hf_llama, tmp_path):
    """(HF checkpoint dir, converted MLX dir) of one tiny random Llama."""
    src = tiny_hf_llama(heads=4, kv_heads=2)
    out = tmp_path / "mlx"
    assert cli("convert", src, "-o", out, "--dtype", "float32").exit_code == 0
    return src, out


def hf_model(src):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(
        str(src), dtype=torch.float32, attn_implementation="eager"
    ).eval()


def torch_logits(model):
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


def our_logits(model_dir, adapter_dir=None):
    from mlx_mixlora.lora import load_adapter_into
    from mlx_mixlora.model import base_identity, load_model

    model, _ = load_model(model_dir)
    if adapter_dir is not None:
        load_adapter_into(model, adapter_dir, base=base_identity(model_dir))
    return np.array(model(mx.array(IDS)))


def random_adapter(
    model_dir,
    out,
    *,
    rank=4,
    alpha=8.0,
    rslora=False,
    rank_pattern=None,
    targets=None,
    layers=(0, 1),
):
    """An adapter with random non-zero A and B, as a trained one would have."""
    from mlx_mixlora.model import base_identity

    cfg = AdapterConfig(
        rank=rank,
        alpha=alpha,
        targets=targets or ["q_proj", "k_proj", "v_proj", "o_proj"],
        layers=list(layers),
        use_rslora=rslora,
        rank_pattern=rank_pattern or {},
        base_model=base_identity(model_dir),
        name="rand",
    )
    rng = np.random.default_rng(1)
    dims = {
        "q_proj": (64, 64),
        "k_proj": (32, 64),
        "v_proj": (32, 64),
        "o_proj": (64, 64),
        "gate_proj": (128, 64),
    }
    weights = {}
    for p in cfg.module_paths():
        out_dim, in_dim = dims[p.rsplit(".", 1)[1]]
        r = cfg.rank_of(p)
        weights[f"{p}.lora_a"] = mx.array(0.2 * rng.standard_normal((r, in_dim)).astype(np.float32))
        weights[f"{p}.lora_b"] = mx.array(
            0.2 * rng.standard_normal((out_dim, r)).astype(np.float32)
        )
    return save_adapter(out, cfg, weights)


@pytest.mark.parametrize("rslora", [False, True])
def test_export_loads_in_peft_with_equal_logits(base, tmp_path, rslora):
    src, mlx_dir = base
    adapter = random_adapter(
        mlx_dir,
        tmp_path / "ad",
        rslora=rslora,
        rank_pattern={"model.layers.1.self_attn.v_proj": 2},
        layers=(1,),
    )
    out = tmp_path / "peft"
    result = cli("export", "peft", adapter, "-o", out, "--base-model-id", "tiny/llama")
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (
        cfg["peft_type"] == "LORA"
        and cfg["task_type"] == "CAUSAL_LM"
        and cfg["layers_to_transform"] == [1]
    )
    assert cfg["base_model_name_or_path"] == "tiny/llama"
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(hf_model(src), str(out)).eval()
    ours = our_logits(mlx_dir, adapter)
    theirs = torch_logits(peft_model)
    base_logits = torch_logits(hf_model(src))
    assert np.abs(ours - base_logits).max() > 1e-2  # the adapter really changes the output
    assert np.abs(ours - theirs).max() <= 1e-4


def test_export_hf_full_checkpoint_matches(base, tmp_path):
    from transformers import AutoModelForCausalLM

    src, mlx_dir = base
    adapter = random_adapter(mlx_dir, tmp_path / "ad")
    out = tmp_path / "hf-full"
    result = cli("export", "hf", mlx_dir, "--adapter", adapter, "-o", out)
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert np.abs(torch_logits(model) - our_logits(mlx_dir, adapter)).max() <= 1e-4


@pytest.mark.parametrize("rslora", [False, True])
def test_import_peft_adapter_matches_peft(base, tmp_path, rslora):
    from peft import LoraConfig, get_peft_model

    src, mlx_dir = base
    torch.manual_seed(0)
    config = LoraConfig(
        r=4,
        lora_alpha=12,
        target_modules=["q_proj", "v_proj", "gate_proj"],
        use_rslora=rslora,
        rank_pattern={"v_proj": 2},
        alpha_pattern={"gate_proj": 3},
        init_lora_weights=False,  # random non-zero B
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(hf_model(src), config).eval()
    peft_model.save_pretrained(str(tmp_path / "peft"))
    theirs = torch_logits(peft_model)
    result = cli("import", "peft", tmp_path / "peft", "-o", tmp_path / "ours", "--model", mlx_dir)
    assert result.exit_code == 0, result.output
    cfg, _ = load_adapter(tmp_path / "ours")
    assert cfg.rank_pattern == {f"model.layers.{i}.self_attn.v_proj": 2 for i in (0, 1)}
    assert cfg.use_rslora == rslora
    ours = our_logits(mlx_dir, tmp_path / "ours")
    assert np.abs(ours - torch_logits(hf_model(src))).max() > 1e-2
    assert np.abs(ours - theirs).max() <= 1e-4


def test_round_trip_ours_peft_ours_is_bit_exact(base, tmp_path):
    _, mlx_dir = base
    adapter = random_adapter(
        mlx_dir, tmp_path / "ad", rank_pattern={"model.layers.0.self_attn.q_proj": 8}
    )
    assert cli("export", "peft", adapter, "-o", tmp_path / "peft").exit_code == 0
    assert (
        cli(
            "import", "peft", tmp_path / "peft", "-o", tmp_path / "back", "--model", mlx_dir
        ).exit_code
        == 0
    )
    c1, w1 = load_adapter(adapter)
    c2, w2 = load_adapter(tmp_path / "back")
    assert set(w1) == set(w2)
    for k in w1:
        assert np.array_equal(np.array(w1[k]), np.array(w2[k])), k
    for field in (
        "rank",
        "alpha",
        "targets",
        "layers",
        "use_rslora",
        "rank_pattern",
        "alpha_pattern",
    ):
        assert getattr(c1, field) == getattr(c2, field), field


def test_import_mlx_lm_adapter(base, tmp_path):
    """An adapter in mlx-lm's layout ([in,r]/[r,out], plain scale) gives mlx-lm's logits."""
    from mlx_lm.tuner.utils import load_adapters

    from mlx_mixlora.model import load_model

    _, mlx_dir = base
    rng = np.random.default_rng(3)
    mlx_lm_dir = tmp_path / "mlxlm"
    mlx_lm_dir.mkdir()
    tensors = {}
    for i in (0, 1):
        for t, out_dim in (("q_proj", 64), ("v_proj", 32)):
            tensors[f"model.layers.{i}.self_attn.{t}.lora_a"] = mx.array(
                rng.standard_normal((64, 4)).astype(np.float32) * 0.2
            )
            tensors[f"model.layers.{i}.self_attn.{t}.lora_b"] = mx.array(
                rng.standard_normal((4, out_dim)).astype(np.float32) * 0.2
            )
    mx.save_safetensors(str(mlx_lm_dir / "adapters.safetensors"), tensors)
    (mlx_lm_dir / "adapter_config.json").write_text(
        json.dumps(
            {
                "fine_tune_type": "lora",
                "num_layers": 2,
                "lora_parameters": {
                    "rank": 4,
                    "scale": 5.0,
                    "dropout": 0.0,
                    "keys": ["self_attn.q_proj", "self_attn.v_proj"],
                },
            }
        )
    )
    model, _ = load_model(mlx_dir)
    load_adapters(model, str(mlx_lm_dir))
    theirs = np.array(model(mx.array(IDS)))
    result = cli("import", "mlx-lm", mlx_lm_dir, "-o", tmp_path / "ours", "--model", mlx_dir)
    assert result.exit_code == 0, result.output
    assert np.abs(our_logits(mlx_dir, tmp_path / "ours") - theirs).max() <= 1e-5


# --- bad input: one clear error each, nothing written -------------------------------------------


def _peft_dir(base, tmp_path, **overrides):
    _, mlx_dir = base
    adapter = random_adapter(mlx_dir, tmp_path / "ad")
    out = tmp_path / "peft"
    assert cli("export", "peft", adapter, "-o", out).exit_code == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg.update(overrides)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize(
    "override,message",
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"peft_type": "IA3"}, "not LORA"),
        ({"r": 8}, "config says 8"),
    ],
)
def test_import_refuses_unsupported_configs(base, tmp_path, override, message):
    src = _peft_dir(base, tmp_path, **override)
    result = cli("import", "peft", src, "-o", tmp_path / "x", "--model", base[1])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_import_refuses_missing_files(base, tmp_path):
    src = _peft_dir(base, tmp_path)
    (src / "adapter_model.safetensors").unlink()
    result = cli("import", "peft", src, "-o", tmp_path / "x")
    assert result.exit_code == 1 and "missing adapter_model.safetensors" in result.output
    result = cli("import", "peft", tmp_path / "nope", "-o", tmp_path / "x")
    assert result.exit_code == 1 and "not found" in result.output
    assert not (tmp_path / "x").exists()


def test_import_refuses_keys_matching_no_module(base, tmp_path):
    src = _peft_dir(base, tmp_path)
    tensors = mx.load(str(src / "adapter_model.safetensors"))
    tensors["base_model.model.model.layers.0.self_attn.rotary.lora_A.weight"] = mx.zeros((4, 64))
    mx.save_safetensors(str(src / "adapter_model.safetensors"), tensors)
    result = cli("import", "peft", src, "-o", tmp_path / "x")
    assert result.exit_code == 1 and "matches no adaptable Llama module" in result.output


def test_import_refuses_wrong_shapes_and_other_bases(base, tmp_path, tiny_hf_llama):
    src = _peft_dir(base, tmp_path)
    other_hf = tiny_hf_llama(name="other", hidden=32, heads=4, kv_heads=2, intermediate=64)
    other = tmp_path / "other-mlx"
    assert cli("convert", other_hf, "-o", other).exit_code == 0
    result = cli("import", "peft", src, "-o", tmp_path / "x", "--model", other)
    assert result.exit_code == 1 and "do not fit the base weight" in result.output, result.output
    tensors = mx.load(str(src / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    tensors[key] = mx.zeros((64, 3))
    mx.save_safetensors(str(src / "adapter_model.safetensors"), tensors)
    result = cli("import", "peft", src, "-o", tmp_path / "x")
    assert result.exit_code == 1 and "do not chain" in result.output
    assert not (tmp_path / "x").exists()


def test_export_refuses_existing_output(base, tmp_path):
    adapter = random_adapter(base[1], tmp_path / "ad")
    (tmp_path / "peft").mkdir()
    result = cli("export", "peft", adapter, "-o", tmp_path / "peft")
    assert result.exit_code == 1 and "already exists" in result.output


def test_trained_adapter_exports_with_parity(base, tmp_path):
    """The issue's full path: HF model → convert → `mixlora train` → export → PEFT on the original model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src, mlx_dir = base
    rows = [
        {"prompt": f"w{i} w{i + 1} w{i + 2}", "completion": f" w{(i * 7) % 200}"} for i in range(32)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    adapter = tmp_path / "trained"
    result = cli(
        "train", "--model", mlx_dir, "--data", data, "--out", adapter, "--iters", "6", "--lr", "5e-2", "--rank", "4",
        "--batch-size", "4", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _, weights = load_adapter(adapter)
    assert any(
        float(mx.abs(v).max()) > 0 for k, v in weights.items() if k.endswith("lora_b")
    )  # B moved off zero
    assert cli("export", "peft", adapter, "-o", tmp_path / "peft").exit_code == 0
    peft_model = PeftModel.from_pretrained(hf_model(src), str(tmp_path / "peft")).eval()
    ours = our_logits(mlx_dir, adapter)
    assert np.abs(ours - torch_logits(hf_model(src))).max() > 1e-4
    assert np.abs(ours - torch_logits(peft_model)).max() <= 1e-4
    assert (
        cli("export", "hf", mlx_dir, "--adapter", adapter, "-o", tmp_path / "full").exit_code == 0
    )
    full = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full"), dtype=torch.float32).eval()
    assert np.abs(ours - torch_logits(full)).max() <= 1e-4


@pytest.mark.parametrize(
    "method,extra",
    [
        ("cat", []),  # rank-grown concatenation (exact, rank Σr)
        ("svd", ["--rank", "3"]),  # SVD-compressed
        ("layer_wise", ["--layer-ranges", "a:0-0,b:1-1"]),  # each depth range from one adapter
        ("ties", ["--density", "0.5", "--rank", "6"]),  # dense method, SVD back to low rank
    ],
)
def test_merged_adapters_export_with_parity(base, tmp_path, method, extra):
    from peft import PeftModel

    src, mlx_dir = base
    a = random_adapter(mlx_dir, tmp_path / "a", rank=4)
    b = random_adapter(mlx_dir, tmp_path / "b", rank=2, targets=["q_proj", "v_proj"])
    cfg_b = json.loads((b / "adapter_config.json").read_text())
    cfg_b["name"] = "b"
    (b / "adapter_config.json").write_text(json.dumps(cfg_b))
    cfg_a = json.loads((a / "adapter_config.json").read_text())
    cfg_a["name"] = "a"
    (a / "adapter_config.json").write_text(json.dumps(cfg_a))
    merged = tmp_path / "merged"
    result = cli("merge", a, b, "--method", method, *extra, "-o", merged)
    assert result.exit_code == 0, result.output
    assert cli("export", "peft", merged, "-o", tmp_path / "peft").exit_code == 0
    peft_model = PeftModel.from_pretrained(hf_model(src), str(tmp_path / "peft")).eval()
    ours = our_logits(mlx_dir, merged)
    assert np.abs(ours - torch_logits(hf_model(src))).max() > 1e-3
    assert np.abs(ours - torch_logits(peft_model)).max() <= 1e-4
