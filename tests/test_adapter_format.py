"""The adapter directory format: round trip, validation, refusal of foreign bases."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_mixlora.adapter_format import (
    AdapterConfig,
    check_against_base,
    load_adapter,
    module_path,
    parse_module_path,
    save_adapter,
    validate_name,
)
from mlx_mixlora.errors import MixloraError


def _adapter(rank=4, rank_pattern=None):
    cfg = AdapterConfig(
        rank=rank,
        alpha=8.0,
        targets=["q_proj", "v_proj"],
        layers=[0, 1],
        rank_pattern=rank_pattern or {},
        base_model={
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "vocab_size": 256,
            "fingerprint": "abc",
        },
    )
    rng = np.random.default_rng(0)
    weights = {}
    for p in cfg.module_paths():
        r = cfg.rank_of(p)
        out = 64 if p.endswith("q_proj") else 32
        weights[f"{p}.lora_a"] = mx.array(rng.standard_normal((r, 64)).astype(np.float32))
        weights[f"{p}.lora_b"] = mx.array(rng.standard_normal((out, r)).astype(np.float32))
    return cfg, weights


def test_round_trip_is_exact(tmp_path):
    cfg, weights = _adapter(rank_pattern={"model.layers.1.self_attn.v_proj": 2})
    save_adapter(tmp_path / "a", cfg, weights)
    cfg2, weights2 = load_adapter(tmp_path / "a")
    assert cfg2 == cfg
    assert set(weights2) == set(weights)
    for k in weights:
        assert np.array_equal(np.array(weights[k]), np.array(weights2[k]))
    assert cfg2.scale_of("model.layers.0.self_attn.q_proj") == 2.0


def test_rslora_scale():
    cfg = AdapterConfig(rank=16, alpha=8, targets=["q_proj"], layers=[0], use_rslora=True)
    assert cfg.scale_of(module_path(0, "q_proj")) == pytest.approx(2.0)


def test_rank_mismatch_between_file_and_config(tmp_path):
    cfg, weights = _adapter()
    save_adapter(tmp_path / "a", cfg, weights)
    raw = json.loads((tmp_path / "a/adapter_config.json").read_text())
    raw["rank"] = 8
    (tmp_path / "a/adapter_config.json").write_text(json.dumps(raw))
    with pytest.raises(MixloraError, match="config says rank 8"):
        load_adapter(tmp_path / "a")


def test_unknown_config_key(tmp_path):
    cfg, weights = _adapter()
    save_adapter(tmp_path / "a", cfg, weights)
    raw = json.loads((tmp_path / "a/adapter_config.json").read_text())
    raw["lora_dropout_schedule"] = 1
    (tmp_path / "a/adapter_config.json").write_text(json.dumps(raw))
    with pytest.raises(MixloraError, match="unknown keys"):
        load_adapter(tmp_path / "a")


def test_config_dict_shape_errors_are_one_line():
    good = _adapter()[0].to_dict()
    with pytest.raises(MixloraError, match="must be a mapping"):
        AdapterConfig.from_dict(5)
    with pytest.raises(MixloraError, match="missing key 'rank'"):
        AdapterConfig.from_dict({k: v for k, v in good.items() if k != "rank"})
    # a format we do not read is named before any key it may lack
    newer = {k: v for k, v in good.items() if k != "rank"} | {"format_version": 99}
    with pytest.raises(MixloraError, match="format_version 99"):
        AdapterConfig.from_dict(newer)


def test_save_refuses_inconsistent_weights_and_writes_nothing(tmp_path):
    cfg, weights = _adapter()
    weights.pop("model.layers.1.self_attn.q_proj.lora_b")
    with pytest.raises(MixloraError, match="missing tensors"):
        save_adapter(tmp_path / "a", cfg, weights)
    assert list(tmp_path.iterdir()) == []


def test_foreign_base_refused():
    cfg, weights = _adapter()
    with pytest.raises(MixloraError, match="hidden_size=64"):
        check_against_base(cfg, weights, {"hidden_size": 128, "num_hidden_layers": 2}, "a")
    with pytest.raises(MixloraError, match="different base model"):
        check_against_base(
            cfg, weights, {"hidden_size": 64, "num_hidden_layers": 2, "fingerprint": "xyz"}, "a"
        )
    with pytest.raises(MixloraError, match="num_hidden_layers=2"):
        check_against_base(cfg, weights, {"hidden_size": 64, "num_hidden_layers": 1}, "a")


@pytest.mark.parametrize("bad", ["../evil", "a/b", "", ".hidden", "x" * 65, "a..b"])
def test_bad_names(bad):
    with pytest.raises(MixloraError, match="invalid adapter name"):
        validate_name(bad)


def test_module_paths_round_trip():
    assert parse_module_path(module_path(3, "down_proj")) == (3, "down_proj")
    with pytest.raises(MixloraError):
        parse_module_path("model.layers.0.mlp.q_proj")
