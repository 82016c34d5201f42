"""Data-parallel `mixlora train` over mx.distributed: 2 ranks on loopback equal one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_train import save_model_dir, tiny_model

from mlx_mixlora.adapter_format import load_adapter

LAUNCH = Path(sys.executable).with_name("mlx.launch")
ROWS = [{"prompt": f"abc {i} {'x' * (i % 7)} =", "completion": f" {i % 5}"} for i in range(32)]


def _train_args(model_dir, data, out):
    return [
        "-m", "mlx_mixlora.cli", "train", "--model", str(model_dir), "--data", str(data), "--out", str(out),
        "--iters", "4", "--batch-size", "4", "--lr", "5e-3", "--seed", "5", "--no-pack", "--quiet",
    ]  # fmt: skip


@pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch not installed")
def test_two_ranks_on_loopback_match_one_process(tmp_path):
    model_dir = save_model_dir(tmp_path / "base", tiny_model(0))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    single = subprocess.run(
        [sys.executable, *_train_args(model_dir, data, tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    launched = subprocess.run(
        [
            str(LAUNCH),
            "--backend",
            "ring",
            "-n",
            "2",
            "--",
            sys.executable,
            *_train_args(model_dir, data, tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    _, w1 = load_adapter(tmp_path / "one")
    _, w2 = load_adapter(tmp_path / "two")
    moved = max(float(np.abs(np.array(w1[k])).max()) for k in w1 if k.endswith("lora_b"))
    assert moved > 1e-3  # training really happened
    # 4 Adam steps at lr 5e-3 turn ulp-level differences (the order of the ranks' sums)
    # into ~1e-5 here: swapping MLX's exp for cpu_math's (1 ulp from exact) moves them by 1.7e-5.
    for k in w1:
        assert np.abs(np.array(w1[k]) - np.array(w2[k])).max() <= 5e-5, k
    assert not list(tmp_path.glob(".two*")), "only rank 0 writes, and atomically"


def test_global_batch_must_split_evenly():
    from mlx_mixlora.errors import MixloraError
    from mlx_mixlora.train.distributed import check_batch, shard_rows

    class FakeGroup:
        def __init__(self, rank, size):
            self._r, self._s = rank, size

        def rank(self):
            return self._r

        def size(self):
            return self._s

    with pytest.raises(MixloraError, match="divisible"):
        check_batch(5, FakeGroup(0, 2))
    rows = list(range(6))
    assert shard_rows(rows, FakeGroup(0, 2)) + shard_rows(rows, FakeGroup(1, 2)) == rows
