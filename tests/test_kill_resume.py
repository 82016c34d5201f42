"""Kill `mixlora train` with SIGKILL after a checkpoint, resume, and end with the straight run's adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from helpers_train import save_model_dir, tiny_model

from mlx_mixlora.adapter_format import load_adapter

ROWS = [{"prompt": f"abc {i} =", "completion": f" {i % 5}"} for i in range(48)]


def train_cmd(model_dir, data, out, *extra):
    return [
        sys.executable, "-m", "mlx_mixlora.cli", "train", "--model", str(model_dir), "--data", str(data),
        "--out", str(out), "--iters", "40", "--batch-size", "2", "--save-every", "2", "--lr", "1e-2",
        "--dropout", "0.1", "--seed", "3", "--quiet", *extra,
    ]  # fmt: skip


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    model_dir = save_model_dir(tmp_path / "base", tiny_model(0))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    straight = subprocess.run(
        train_cmd(model_dir, data, tmp_path / "straight"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    ckpts = tmp_path / "killed.checkpoints"
    proc = subprocess.Popen(
        train_cmd(model_dir, data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = (
            [p for p in ckpts.glob("step_*") if (p / "state.json").is_file()]
            if ckpts.is_dir()
            else []
        )
        if len(done) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; make the run longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave an adapter"
    # No half-written checkpoint is ever visible: every step_* dir is complete.
    for step in ckpts.glob("step_*"):
        assert (step / "state.json").is_file(), f"incomplete checkpoint {step}"

    resumed = subprocess.run(
        train_cmd(model_dir, data, out, "--resume"), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    _, w_straight = load_adapter(tmp_path / "straight")
    _, w_resumed = load_adapter(out)
    for k in w_straight:
        assert np.array_equal(np.array(w_straight[k]), np.array(w_resumed[k])), k
