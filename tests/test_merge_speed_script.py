"""benchmarks/merge_speed.py's whole-command timing runs the very merge it claims to time."""

from __future__ import annotations

import pytest
from helpers_bench import load_benchmark
from helpers_merge import make_adapter

from mlx_mixlora.adapter_format import save_adapter
from mlx_mixlora.merge import merge_adapters


def _script():
    return load_benchmark("merge_speed")


def test_merge_command_passes_every_option_by_name(tmp_path):
    ms = _script()
    cmd = ms.merge_command(["a", "b"], "dare_ties", {"drop": 0.5, "rank": 8}, tmp_path / "o")
    i = cmd.index("merge")
    assert cmd[i + 1 :] == [
        "a", "b", "--method", "dare_ties", "--weights", "0.5,0.3,0.2",
        "--drop=0.5", "--rank=8", "-o", str(tmp_path / "o"), "--json",
    ]  # fmt: skip


@pytest.mark.slow  # four fresh processes, one compiling MLX's kernels from scratch
def test_time_command_times_the_same_merge_as_in_process(tmp_path):
    ms = _script()
    ads = [make_adapter(i, name=f"a{i}") for i in range(3)]
    dirs = [str(save_adapter(tmp_path / a.name, a.config, a.weights)) for a in ads]
    kw = {"density": 0.2, "rank": 4}
    got = ms.time_command(dirs, "ties", kw, runs=2)
    want = merge_adapters(ads, "ties", weights=ms.WEIGHTS, **kw).rel_error
    assert got["rel_error"] == pytest.approx(want, rel=1e-6)
    assert got["wall"]["n"] == 2 and 0 < got["wall"]["min"] <= got["wall"]["median"]
    assert got["cpu"]["min"] > 0 and got["first_run_wall"] > 0
    assert got["command"].startswith(("mixlora merge A1 A2 A3 --method ties", "python"))
