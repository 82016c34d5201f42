"""Kill `mixlora train` with SIGKILL after a checkpoint, resume, and end with the straight run's adapter."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_train import save_model_dir, tiny_model

from mlx_mixlora.adapter_format import load_adapter
from mlx_mixlora.train.metrics import read_metrics

ROWS = [{"prompt": f"abc {i} =", "completion": f" {i % 5}"} for i in range(48)]


def train_cmd(model_dir, data, out, *extra):
    return [
        sys.executable, "-m", "mlx_mixlora.cli", "train", "--model", str(model_dir), "--data", str(data),
        "--out", str(out), "--iters", "40", "--batch-size", "2", "--save-every", "2", "--lr", "1e-2",
        "--dropout", "0.1", "--seed", "3", "--steps-per-report", "1", "--quiet", *extra,
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
    # The live training record holds whole lines only, one per step so far.
    live = read_metrics(ckpts / "metrics.jsonl")
    assert [r["step"] for r in live] == list(range(1, len(live) + 1))

    resumed = subprocess.run(
        train_cmd(model_dir, data, out, "--resume"), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    _, w_straight = load_adapter(tmp_path / "straight")
    _, w_resumed = load_adapter(out)
    for k in w_straight:
        assert np.array_equal(np.array(w_straight[k]), np.array(w_resumed[k])), k
    # The record continues the same file: every step once, the same losses as the straight run.
    final = read_metrics(out)
    assert [r["step"] for r in final] == list(range(1, 41))
    assert read_metrics(ckpts / "metrics.jsonl") == final
    assert [r["train_loss"] for r in final] == [
        r["train_loss"] for r in read_metrics(tmp_path / "straight")
    ]


# --- issue 18: kill -9 anywhere, run the same command again: it succeeds, nothing stale is left ---


def _stale(*dirs):
    """Our temp/old names (`.X.tmp-*`, `.X.old-*`) anywhere under `dirs`."""
    found = []
    for d in dirs:
        for p in Path(d).rglob(".*"):
            if ".tmp-" in p.name or ".old-" in p.name:
                found.append(str(p))
    return found


def _cli(*args):
    return [sys.executable, "-m", "mlx_mixlora.cli", *map(str, args)]


def _kill_cases(tmp_path):
    """(name, argv, output path, dirs to inspect) for the four long-writing commands."""
    from helpers_route_cli import _dirs

    from mlx_mixlora.adapter_format import AdapterConfig, save_adapter
    from mlx_mixlora.model import base_identity

    # big enough (about 60 MB) that writing the output takes a while
    model_dir = save_model_dir(
        tmp_path / "base",
        tiny_model(
            0, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, vocab_size=4096
        ),
    )
    cfg = AdapterConfig(rank=4, alpha=8.0, targets=["q_proj", "v_proj"], layers=[0, 1, 2, 3],
                        base_model=base_identity(model_dir), name="a")  # fmt: skip
    rng = np.random.default_rng(0)
    w = {}
    for p in cfg.module_paths():
        out_dim = 512 if p.endswith("q_proj") else 256
        w[f"{p}.lora_a"] = rng.standard_normal((4, 512)).astype(np.float32)
        w[f"{p}.lora_b"] = rng.standard_normal((out_dim, 4)).astype(np.float32)
    import mlx.core as mx

    ad = save_adapter(tmp_path / "ad", cfg, {k: mx.array(v) for k, v in w.items()})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    small = save_model_dir(tmp_path / "small", tiny_model(0))
    rmodel, rads = _dirs()
    work = tmp_path / "out"
    work.mkdir()
    return [
        ("convert", _cli("convert", model_dir, "-o", work / "conv"), work / "conv", [work]),
        ("merge-into-base",
         _cli("merge", ad, ad, "-m", "linear", "--into-base", model_dir, "-o", work / "fused"),
         work / "fused", [work]),
        ("train", train_cmd(small, data, work / "ad")[:-1] + ["--iters", "12"],
         work / "ad", [work]),
        ("gate-train",
         _cli("gate", "train", "--model", rmodel, "--adapters", *rads, "--n-per-task", "20",
              "--steps", "60", "--n-eval", "0", "-o", work / "gate"),
         work / "gate", [work]),
    ]  # fmt: skip


def _kill_when(argv, ready, deadline_s=240.0):
    """Start `argv`, SIGKILL it as soon as `ready()` is true; True if it was killed in time."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + deadline_s
    while time.time() < end and proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    proc.wait()
    return False


def _rerun_is_clean(argv, out, dirs):
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert out.exists()
    assert _stale(*dirs) == [], _stale(*dirs)


@pytest.mark.slow
def test_kill_while_writing_then_rerun_cleans_up(tmp_path):
    """Killed exactly while its temp output exists (the debris case), the rerun sweeps it."""
    for name, argv, out, dirs in _kill_cases(tmp_path):
        killed = _kill_when(argv, lambda dirs=dirs: bool(_stale(*dirs)))
        assert killed, f"{name}: finished before its temp output was seen"
        assert not out.exists(), name
        assert _stale(*dirs), f"{name}: the kill left nothing to clean (test would prove nothing)"
        _rerun_is_clean(argv, out, dirs)


@pytest.mark.slow
def test_kill_at_random_points_then_rerun(tmp_path):
    """SIGKILL after a random delay (anywhere from start-up to the final rename), then rerun."""
    rng = random.Random(18)
    for _name, argv, out, dirs in _kill_cases(tmp_path):
        t0 = time.time()
        straight = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert straight.returncode == 0, straight.stderr
        took = time.time() - t0
        shutil.rmtree(out)
        shutil.rmtree(out.with_name(out.name + ".checkpoints"), ignore_errors=True)
        for _ in range(4):
            at = time.time() + rng.uniform(0.0, took)
            _kill_when(argv, lambda at=at: time.time() >= at)
            if out.exists():  # the run finished before the kill: start over
                shutil.rmtree(out)
            _rerun_is_clean(argv, out, dirs)
            shutil.rmtree(out)
