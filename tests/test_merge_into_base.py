"""Fusing merged deltas into base weights: in place and reversible, or as a new model dir."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from helpers_merge import assert_close, make_adapter, np_delta
from helpers_train import tiny_args
from helpers_train import tiny_model as _tiny_model
from mlx.utils import tree_flatten

from mlx_mixlora.adapter_format import module_path
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.merge import fuse_deltas, merge_adapters, merge_into_base, restore
from mlx_mixlora.model import base_identity, load_model

ARGS = {k: v for k, v in vars(tiny_args(vocab_size=256)).items() if v is not None}


def tiny_model(seed=0):
    return _tiny_model(seed, vocab_size=256)


def save_model_dir(path, seed=0, dtype=mx.float32, shards=1):
    model = tiny_model(seed)
    path.mkdir(parents=True)
    params = {k: v.astype(dtype) for k, v in tree_flatten(model.parameters())}
    if shards == 1:
        mx.save_safetensors(str(path / "model.safetensors"), params)
    else:  # layer-0 tensors in one shard, everything else in the other
        first = {k: v for k, v in params.items() if ".layers.0." in k}
        rest = {k: v for k, v in params.items() if k not in first}
        mx.save_safetensors(str(path / "model-00001-of-00002.safetensors"), first)
        mx.save_safetensors(str(path / "model-00002-of-00002.safetensors"), rest)
    (path / "config.json").write_text(json.dumps(ARGS))
    (path / "tokenizer.json").write_text('{"fake": "tokenizer, copied byte for byte"}')
    return path


def _weights(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def test_fuse_and_restore_are_exact():
    model = tiny_model()
    ads = [make_adapter(1), make_adapter(2, targets=("q_proj", "o_proj"), rank=2)]
    before = _weights(model)
    originals = {k: v for k, v in tree_flatten(model.parameters())}
    x = mx.array([[1, 5, 9, 30]])
    y0 = model(x)
    res = merge_adapters(ads, "linear", weights=[0.5, 2.0])
    handle = fuse_deltas(model, res.updates())
    after = _weights(model)
    q0 = module_path(0, "q_proj")
    want = before[f"{q0}.weight"] + 0.5 * np_delta(ads[0], q0) + 2.0 * np_delta(ads[1], q0)
    assert_close(after[f"{q0}.weight"], want)
    unaffected = "model.layers.0.mlp.up_proj.weight"
    assert np.array_equal(after[unaffected], before[unaffected])
    assert float(mx.abs(model(x) - y0).max()) > 1e-3
    restore(model, handle)
    for k, v in tree_flatten(model.parameters()):
        assert v is originals[k]  # the very same arrays: bit-identical
        assert np.array_equal(np.array(v), before[k])
    assert np.array_equal(np.array(model(x)), np.array(y0))


def test_dense_and_factor_updates_fuse_the_same():
    ads = [make_adapter(1), make_adapter(2)]
    res = merge_adapters(ads, "cat")
    dense = {p: res.delta(p) for p in res.module_paths()}
    m1, m2 = tiny_model(), tiny_model()
    fuse_deltas(m1, res.updates())
    fuse_deltas(m2, dense)
    for (_, a), (_, b) in zip(
        tree_flatten(m1.parameters()), tree_flatten(m2.parameters()), strict=True
    ):
        assert_close(np.array(a), np.array(b), tol=1e-6)


def test_fuse_rejects_bad_paths_and_shapes_without_changing_anything():
    model = tiny_model()
    before = _weights(model)
    q0 = module_path(0, "q_proj")
    with pytest.raises(MixloraError, match="delta is"):
        fuse_deltas(model, {q0: mx.zeros((64, 64)), module_path(0, "k_proj"): mx.zeros((64, 64))})
    with pytest.raises(MixloraError, match="no module"):
        fuse_deltas(model, {"model.layers.7.self_attn.q_proj": mx.zeros((64, 64))})
    after = _weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method,kw", [("linear", {}), ("ties", {"density": 0.3})])
def test_merge_into_base_writes_a_loadable_model(tmp_path, method, kw):
    src = save_model_dir(tmp_path / "base")
    ident = base_identity(src)
    ads = [make_adapter(1, base=ident), make_adapter(2, base=ident, rank=3)]
    res = merge_adapters(ads, method, output="deltas" if method == "ties" else "adapter", **kw)
    before = {f.name: f.read_bytes() for f in src.iterdir()}
    out = merge_into_base(src, res.updates(), tmp_path / "out", base_identity=ident)
    assert {f.name: f.read_bytes() for f in src.iterdir()} == before  # a clone is copy-on-write
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    model, _ = load_model(out)
    base, _ = load_model(src)
    got, ref = _weights(model), _weights(base)
    for p in res.module_paths():
        want = ref[f"{p}.weight"] + np.array(res.delta(p), dtype=np.float64)
        assert_close(got[f"{p}.weight"], want)
    untouched = [k for k in ref if k.rsplit(".", 1)[0] not in res.module_paths()]
    assert untouched and all(np.array_equal(got[k], ref[k]) for k in untouched)
    card = json.loads((out / "mixlora_merge.json").read_text())
    assert card["base"] == str(src)
    assert set(card["files"]) == set(before) and set(card["files"].values()) <= {"clone", "copy"}


def test_merge_into_base_refuses_other_base_and_leaves_no_output(tmp_path):
    src = save_model_dir(tmp_path / "base")
    other = save_model_dir(tmp_path / "other", seed=1)
    ident = base_identity(other)
    res = merge_adapters([make_adapter(1, base=ident)], "linear")
    with pytest.raises(MixloraError, match="adapter was trained on a different base model"):
        merge_into_base(src, res.updates(), tmp_path / "out", base_identity=ident)
    bad = {module_path(0, "q_proj"): mx.zeros((64, 32))}
    with pytest.raises(MixloraError, match="delta is"):
        merge_into_base(src, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "other"]  # no temp dirs left


def test_merge_into_base_refuses_an_unfusable_dtype_before_writing(tmp_path):
    src = save_model_dir(tmp_path / "base", dtype=mx.int32)
    q0 = module_path(0, "q_proj")
    with pytest.raises(MixloraError, match=f"{q0}.weight has dtype I32; cannot fuse into it"):
        merge_into_base(src, {q0: mx.zeros((64, 64))}, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no output, no temp dir


def test_merge_into_bf16_sharded_base_patches_only_what_changes(tmp_path):
    src = save_model_dir(tmp_path / "base", dtype=mx.bfloat16, shards=2)
    ident = base_identity(src)
    ads = [make_adapter(1, base=ident, layers=(0,)), make_adapter(2, base=ident, layers=(0,))]
    res = merge_adapters(ads, "linear", weights=[1.0, -0.5])
    out = merge_into_base(src, res.updates(), tmp_path / "out")
    untouched = "model-00002-of-00002.safetensors"
    assert (out / untouched).read_bytes() == (src / untouched).read_bytes()
    got = mx.load(str(out / "model-00001-of-00002.safetensors"))
    ref = mx.load(str(src / "model-00001-of-00002.safetensors"))
    q0 = module_path(0, "q_proj")
    want = (ref[f"{q0}.weight"].astype(mx.float32) + res.delta(q0)).astype(mx.bfloat16)
    assert got[f"{q0}.weight"].dtype == mx.bfloat16
    assert mx.array_equal(got[f"{q0}.weight"], want)
    assert not mx.array_equal(got[f"{q0}.weight"], ref[f"{q0}.weight"])
    up = "model.layers.0.mlp.up_proj.weight"
    assert mx.array_equal(got[up], ref[up])
    assert set(got) == set(ref)


def test_fuse_reaches_through_a_lora_wrapper():
    import mlx.nn as nn

    class Wrapper(nn.Module):  # the shape of mlx_mixlora.lora.LoRALinear: base + factors
        def __init__(self, base):
            super().__init__()
            self.base = base

        def __call__(self, x):
            return self.base(x)

    model = tiny_model()
    attn = model.model.layers[0].self_attn
    orig = attn.q_proj.weight
    attn.q_proj = Wrapper(attn.q_proj)
    q0 = module_path(0, "q_proj")
    delta = mx.ones((64, 64)) * 0.25
    handle = fuse_deltas(model, {q0: delta})
    assert_close(attn.q_proj.base.weight, np.array(orig) + 0.25)
    restore(model, handle)
    assert attn.q_proj.base.weight is orig


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize("output", ["adapter", "deltas"])
def test_merge_into_base_in_row_tiles_equals_one_fuse_per_weight(
    tmp_path, monkeypatch, dtype, output
):
    """Tiles of 3 rows (64 rows: 21 full tiles and a short one) give the whole-weight result.

    Dense deltas are an elementwise add: bit-identical. Factors go through BLAS,
    whose rounding may depend on the tile's row count (a 1-row tile is a GEMV):
    equal to the fp32 result within the stored dtype's precision.
    """
    import mlx_mixlora.merge.into_base as into_base

    src = save_model_dir(tmp_path / "base", dtype=dtype)
    ads = [make_adapter(1), make_adapter(2, rank=3, targets=("q_proj", "v_proj"))]
    res = merge_adapters(ads, "linear", weights=[0.7, -1.3], output=output)
    whole = merge_into_base(src, res.updates(), tmp_path / "whole")
    monkeypatch.setattr(into_base, "TILE_BYTES", 3 * 64 * dtype.size)
    tiled = merge_into_base(src, res.updates(), tmp_path / "tiled")
    got, want = mx.load(str(tiled / "model.safetensors")), mx.load(str(whole / "model.safetensors"))
    ref = mx.load(str(src / "model.safetensors"))
    rtol = {mx.float32: 1e-6, mx.float16: 2**-10, mx.bfloat16: 2**-7}[dtype]
    for p in res.module_paths():
        k = f"{p}.weight"
        assert got[k].dtype == dtype
        exact = ref[k].astype(mx.float32) + res.delta(p)
        if output == "deltas":
            assert mx.array_equal(got[k], want[k])
            assert mx.array_equal(got[k], exact.astype(dtype))
        else:
            assert_close(np.array(got[k].astype(mx.float32)), np.array(exact), tol=rtol)
        assert not mx.array_equal(got[k], ref[k])
    unaffected = [k for k in ref if k.rsplit(".", 1)[0] not in res.module_paths()]
    assert unaffected and all(mx.array_equal(got[k], ref[k]) for k in unaffected)


def test_merge_into_base_refuses_a_header_whose_bytes_do_not_match_its_shape(tmp_path):
    src = tmp_path / "base"
    src.mkdir()
    q0 = module_path(0, "q_proj")
    info = {f"{q0}.weight": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 8192]}}
    raw = json.dumps(info).encode()
    (src / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8192))
    (src / "config.json").write_text(json.dumps(ARGS))
    with pytest.raises(MixloraError, match=r"has 8192 bytes, not \[64, 64\] of F32"):
        merge_into_base(src, {q0: mx.zeros((64, 64))}, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
