"""`mixlora merge` end to end: adapter dirs in, adapter or model dir out, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from click.testing import CliRunner
from helpers_merge import assert_close, make_adapter, np_delta
from test_merge_into_base import save_model_dir

from mlx_mixlora.adapter_format import load_adapter, module_path, save_adapter
from mlx_mixlora.cli import main
from mlx_mixlora.merge import METHODS
from mlx_mixlora.model import base_identity, load_model

Q0 = module_path(0, "q_proj")


def _save(tmp_path, base=None):
    ads = [
        make_adapter(1, name="cls", base=base),
        make_adapter(2, name="qa", rank=2, base=base),
        make_adapter(3, name="sum", targets=("q_proj",), base=base),
    ]
    dirs = []
    for ad in ads:
        save_adapter(tmp_path / ad.name, ad.config, ad.weights)
        dirs.append(str(tmp_path / ad.name))
    return ads, dirs


def test_cli_weighted_merge_writes_exact_adapter(tmp_path):
    ads, dirs = _save(tmp_path)
    out = tmp_path / "merged"
    r = CliRunner().invoke(
        main,
        [
            "merge",
            *dirs,
            "--method",
            "linear",
            "--weights",
            "0.2,0.3,0.5",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["rel_error"] == 0.0 and summary["modules"] == 4
    cfg, w = load_adapter(out)
    ref = 0.2 * np_delta(ads[0], Q0) + 0.3 * np_delta(ads[1], Q0) + 0.5 * np_delta(ads[2], Q0)
    assert_close(
        cfg.scale_of(Q0) * (np.array(w[f"{Q0}.lora_b"]) @ np.array(w[f"{Q0}.lora_a"])), ref
    )
    assert cfg.extra["merge"]["method"] == "linear"


def test_cli_layer_wise_and_ties_with_rank(tmp_path):
    ads, dirs = _save(tmp_path)
    r = CliRunner().invoke(
        main,
        [
            "merge",
            *dirs,
            "-m",
            "layer_wise",
            "--layer-ranges",
            "cls:0,sum:1",
            "-o",
            str(tmp_path / "lw"),
        ],
    )
    assert r.exit_code == 0, r.output
    cfg, w = load_adapter(tmp_path / "lw")
    q1 = module_path(1, "q_proj")
    got = cfg.scale_of(q1) * (np.array(w[f"{q1}.lora_b"]) @ np.array(w[f"{q1}.lora_a"]))
    assert_close(got, np_delta(ads[2], q1))
    r = CliRunner().invoke(
        main,
        [
            "merge",
            *dirs,
            "-m",
            "ties",
            "--density",
            "0.3",
            "--rank",
            "4",
            "-o",
            str(tmp_path / "t"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert load_adapter(tmp_path / "t")[0].rank == 4
    assert "relative error" in r.output


def test_cli_into_base(tmp_path):
    src = save_model_dir(tmp_path / "base")
    ads, dirs = _save(tmp_path, base=base_identity(src))
    out = tmp_path / "fused"
    r = CliRunner().invoke(
        main,
        [
            "merge",
            *dirs,
            "-m",
            "dare_ties",
            "--drop",
            "0.5",
            "--seed",
            "3",
            "--into-base",
            str(src),
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    fused, _ = load_model(out)
    base, _ = load_model(src)
    diff = np.array(fused.model.layers[0].self_attn.q_proj.weight) - np.array(
        base.model.layers[0].self_attn.q_proj.weight
    )
    assert np.abs(diff).max() > 1e-3
    assert np.array_equal(
        np.array(fused.model.layers[0].mlp.up_proj.weight),
        np.array(base.model.layers[0].mlp.up_proj.weight),
    )


def test_cli_errors_are_one_line_and_write_nothing(tmp_path):
    _, dirs = _save(tmp_path)
    other = make_adapter(9, name="other", base={"hidden_size": 128})
    save_adapter(tmp_path / "other", other.config, other.weights)
    cases = [
        (["-m", "magnitude_prune"], "needs a density"),
        (["-m", "linear", str(tmp_path / "other")], "different base"),
        (["-m", "linear", "--weights", "1,2"], "got 2 weights for 3 adapters"),
        (["-m", "layer_wise", "--layer-ranges", "nope:0-1"], "unknown adapter 'nope'"),
    ]
    for extra, msg in cases:
        opts = [e for e in extra if not e.startswith(str(tmp_path))]
        more = [e for e in extra if e.startswith(str(tmp_path))]
        r = CliRunner().invoke(main, ["merge", *dirs, *more, *opts, "-o", str(tmp_path / "x")])
        assert r.exit_code == 1, r.output
        assert msg in r.output and r.output.count("error:") == 1
        assert not (tmp_path / "x").exists()
    r = CliRunner().invoke(
        main, ["merge", str(tmp_path / "missing"), "-m", "linear", "-o", str(tmp_path / "x")]
    )
    assert r.exit_code == 1 and "not found" in r.output


def test_help_lists_every_method_without_loading_mlx():
    """`mixlora --help` builds every command: the method table must come without MLX or NumPy."""
    code = "import sys, mlx_mixlora.cli.merge_cmd as m; print([x for x in ('mlx.core', 'numpy') if x in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    r = CliRunner().invoke(main, ["merge", "--help"])
    assert r.exit_code == 0, r.output
    for name, m in METHODS.items():
        assert name in r.output  # a --method choice
        if name == m.name:  # and a line of the method table (aliases only as a choice)
            assert any(line.split()[:2] == [name, m.kind] for line in r.output.splitlines())


def test_cli_defaults_are_the_apis():
    """`mixlora merge` with no option merges as `merge_adapters` with none: one set of defaults."""
    import dataclasses

    from mlx_mixlora.cli.merge_cmd import merge
    from mlx_mixlora.merge.options import MergeOptions

    api = {f.name: f.default for f in dataclasses.fields(MergeOptions)}
    parsed = merge.make_context("merge", ["a1", "a2", "-m", "ties", "-o", "out"]).params
    shared = set(parsed) & set(api)
    assert shared >= {"seed", "lam", "oversample", "power_iters", "rank", "majority_sign"}
    for name in shared:
        assert parsed[name] == api[name], name
