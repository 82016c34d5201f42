"""Issue 18, categories 4, 2 and 3: where outputs are born.

4: an output that is, contains or lies inside an input is refused (nothing destroyed).
2: filesystem failures (read-only, full disk, links, odd paths) are one error line, nothing left.
3: debris of killed runs (`.OUT.tmp-*`, `.OUT.old-*`) is swept; `--overwrite` leaves none.
"""

from __future__ import annotations

import errno
import json
import os
import time

import pytest
from helpers_hostile import inject_write_failure, leftovers
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401
from helpers_train import save_model_dir, tiny_model
from test_bad_inputs import GOOD_ROWS, assert_clean_failure, make_adapter, run, write_jsonl

from mlx_mixlora.adapter_format import load_adapter


@pytest.fixture
def model_dir(tmp_path):
    return save_model_dir(tmp_path / "base", tiny_model(0))


def _snapshot(path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in path.rglob("*"))


# --- 4. inputs destroyed on request ---------------------------------------------------------------


def test_train_out_is_the_model_dir(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    before = _snapshot(model_dir)
    for out in (model_dir, model_dir / "inside", tmp_path):  # is, inside, contains the inputs
        result = run(
            "train",
            "--model",
            model_dir,
            "--data",
            data,
            "--out",
            out,
            "--iters",
            "1",
            "--overwrite",
        )
        assert_clean_failure(result, "overlaps the input")
    assert _snapshot(model_dir) == before
    assert not (model_dir / "inside").exists()


def test_export_peft_onto_its_own_adapter(tmp_path, model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    before = _snapshot(ad)
    assert_clean_failure(run("export", "peft", ad, "-o", ad, "--overwrite"), "overlaps the input")
    assert _snapshot(ad) == before
    load_adapter(ad)


def test_other_commands_refuse_to_overwrite_their_inputs(tmp_path, model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    peft = tmp_path / "peft"
    assert run("export", "peft", ad, "-o", peft).exit_code == 0
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abc"}])
    cases = [
        ("merge", ad, ad, "-m", "linear", "-o", ad),
        ("merge", ad, ad, "-m", "linear", "--into-base", model_dir, "-o", model_dir),
        ("convert", model_dir, "-o", model_dir),
        ("export", "hf", model_dir, "--adapter", ad, "-o", model_dir),
        ("import", "peft", peft, "-o", peft),
        ("import", "peft", peft, "-o", ad, "--model", ad),
        ("generate", "--model", model_dir, "--adapters", ad, "--jsonl", prompts, "-o", prompts),
        ("gate", "train", "--model", model_dir, "--adapters", ad, "-o", ad),
    ]
    before = {p: _snapshot(p) for p in (ad, peft, model_dir)}
    for args in cases:
        assert_clean_failure(run(*args, "--overwrite"), "overlaps the input")
    assert {p: _snapshot(p) for p in before} == before
    assert prompts.read_text() == '{"prompt": "abc"}\n'


# --- 2. filesystem failures ---------------------------------------------------------------------


def _write_commands(tmp_path, model_dir, routing):
    """(name, argv without -o, output kind) for every command that writes something."""
    ad = make_adapter(tmp_path / "ad", model_dir)
    peft = tmp_path / "peft"
    assert run("export", "peft", ad, "-o", peft).exit_code == 0
    mlxlm = tmp_path / "mlxlm"
    mlxlm.mkdir()
    import mlx.core as mx
    import numpy as np

    mx.save_safetensors(
        str(mlxlm / "adapters.safetensors"),
        {
            "model.layers.0.self_attn.q_proj.lora_a": mx.array(np.ones((64, 2), np.float32)),
            "model.layers.0.self_attn.q_proj.lora_b": mx.array(np.ones((2, 64), np.float32)),
        },
    )
    (mlxlm / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "lora_parameters": {"rank": 2, "scale": 1.0}})
    )
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abc"}])
    rmodel, rads = routing
    return [
        ("train", ["train", "--model", model_dir, "--data", data, "--iters", "1", "--quiet", "--out"]),
        ("merge", ["merge", ad, ad, "-m", "linear", "-o"]),
        ("merge-into-base", ["merge", ad, ad, "-m", "linear", "--into-base", model_dir, "-o"]),
        ("convert", ["convert", model_dir, "-o"]),
        ("export-peft", ["export", "peft", ad, "-o"]),
        ("export-hf", ["export", "hf", model_dir, "--adapter", ad, "-o"]),
        ("import-peft", ["import", "peft", peft, "-o"]),
        ("import-mlx-lm", ["import", "mlx-lm", mlxlm, "-o"]),
        ("gate-train", ["gate", "train", "--model", rmodel, "--adapters", *rads, "--n-per-task",
                        "4", "--steps", "2", "--n-eval", "0", "-o"]),
        ("generate", ["generate", "--model", model_dir, "--adapters", ad, "--jsonl", prompts,
                      "--max-tokens", "2", "-o"]),
    ]  # fmt: skip


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_every_writer_reports_a_broken_filesystem_in_one_line(
    tmp_path,
    model_dir,
    routing_dirs,  # noqa: F811
    monkeypatch,
    code,
):
    commands = _write_commands(tmp_path, model_dir, routing_dirs)
    broken = tmp_path / "broken"
    broken.mkdir()
    inject_write_failure(monkeypatch, broken, code)
    for name, argv in commands:
        out = broken / name
        result = run(*argv, out)
        msg = assert_clean_failure(result, f"cannot write {out}", out=out)
        assert os.strerror(code) in msg or "disk full or not writable" in msg, msg
    monkeypatch.undo()
    assert os.listdir(broken) == []


def test_dangling_symlink_output(tmp_path, model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere" / "x")
    result = run("merge", ad, ad, "-m", "linear", "-o", link)
    assert_clean_failure(result, "already exists", "dangling symbolic link")
    assert leftovers(tmp_path, "out") == []
    result = run("merge", ad, ad, "-m", "linear", "-o", link, "--overwrite")
    assert result.exit_code == 0, result.output
    assert link.is_dir() and not link.is_symlink() and not (tmp_path / "nowhere").exists()
    assert leftovers(tmp_path, "out") == []
    load_adapter(link)


def test_train_out_dot_overwrite(tmp_path, model_dir, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    data = write_jsonl(work / "d.jsonl", GOOD_ROWS)
    monkeypatch.chdir(work)
    result = run(
        "train", "--model", model_dir, "--data", data, "--out", ".", "--overwrite", "--iters", "1"
    )
    assert_clean_failure(result, "current directory")
    assert (work / "keep.txt").read_text() == "mine"


def test_generate_out_is_an_existing_directory(tmp_path, model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abc"}])
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["--model", model_dir, "--adapters", ad, "--jsonl", prompts, "-o", out, "--overwrite"]
    assert_clean_failure(run("generate", *args), "is a directory")
    assert (out / "keep.txt").read_text() == "mine"


# --- 3. debris -------------------------------------------------------------------------------------

DEAD_PID = 99_999_999  # above Linux's largest pid_max (2**22), so never a running process


def _debris(parent, name, live_pid):
    """What killed runs leave beside output `name`, plus things the sweep must not touch."""
    swept = [
        parent / f".{name}.tmp-{DEAD_PID}-ab12cd",  # a killed run's temp output (a dir)
        parent / f".{name}.old-{DEAD_PID}",  # a killed --overwrite's moved-aside old output
        parent / f".{name}.tmp-xy7z9q01",  # an old-style name (no pid), two days old
        parent / f".{name}.tmp-{live_pid}-reused",  # a running pid, but 8 days old: pid reused
    ]
    kept = [
        parent / f".{name}.tmp-{live_pid}-ef34gh",  # a live writer's temp
        parent / f".{name}.tmp-zz9y8x77",  # no pid, but young: might be live
        parent / f".{name}x.tmp-{DEAD_PID}-ab",  # someone else's output name
        parent / f"{name}.tmp-{DEAD_PID}-ab",  # not hidden: not ours
    ]
    for p in swept[:2] + kept[:1]:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"x" * 1000)
    for p in swept[2:] + kept[1:]:
        p.write_bytes(b"y")
    for p, days in ((swept[2], 2), (swept[3], 8)):
        old = time.time() - days * 86400
        os.utime(p, (old, old))
    return swept, kept


def test_a_later_run_sweeps_debris_of_killed_runs(tmp_path, model_dir):
    ad = make_adapter(tmp_path / "ad", model_dir)
    swept, kept = _debris(tmp_path, "m", os.getppid())
    result = run("merge", ad, ad, "-m", "linear", "-o", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert [p for p in swept if os.path.lexists(p)] == []
    assert all(os.path.lexists(p) for p in kept)


def test_checkpoint_temp_dirs_of_a_killed_run_are_swept(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS)
    ckpts = tmp_path / "ad.checkpoints"
    ckpts.mkdir()
    stale = ckpts / f".step_0000003.tmp-{DEAD_PID}-qq"
    stale.mkdir()
    (stale / "adapters.safetensors").write_bytes(b"half")
    result = run(
        "train", "--model", model_dir, "--data", data, "--out", tmp_path / "ad", "--iters", "4",
        "--save-every", "2", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert sorted(p.name for p in ckpts.iterdir()) == ["metrics.jsonl", "step_0000002"]


@pytest.mark.parametrize("existing", ["file", "symlink", "dir"])
def test_overwrite_leaves_no_old_copy(tmp_path, model_dir, existing):
    ad = make_adapter(tmp_path / "ad", model_dir)
    out = tmp_path / "m"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    if existing == "file":
        out.write_text("old")
    elif existing == "symlink":
        out.symlink_to(target)
    else:
        out.mkdir()
        (out / "old.txt").write_text("old")
    result = run("merge", ad, ad, "-m", "linear", "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert leftovers(tmp_path, "m") == []
    load_adapter(out)
    assert (target / "keep.txt").read_text() == "mine"  # a link is replaced, never followed


def test_a_kill_while_old_checkpoints_are_pruned_leaves_no_partial_step(tmp_path, monkeypatch):
    """Pruning a checkpoint is interrupted after its first file is gone (a kill mid-delete):
    every step_* still visible is whole (the rest sits under a hidden `.old-PID` name)."""
    import shutil

    import mlx.core as mx

    from mlx_mixlora.train import checkpoint

    ckpts = tmp_path / "run.checkpoints"
    lora = {"a": mx.ones((2, 2))}
    for step in (1, 2):
        checkpoint.save(ckpts, step, lora, {"m": mx.zeros((2,))}, {"config": {}}, keep=2)
    real = shutil.rmtree

    def killed_mid_delete(path, *a, **k):
        path = os.fspath(path)
        first = os.path.join(path, checkpoint.STATE_FILE)
        os.remove(first if os.path.exists(first) else os.path.join(path, os.listdir(path)[0]))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(ckpts, 3, lora, {"m": mx.zeros((2,))}, {"config": {}}, keep=2)
    monkeypatch.setattr(shutil, "rmtree", real)
    visible = sorted(p.name for p in ckpts.glob("step_*"))
    assert visible == ["step_0000002", "step_0000003"]
    for name in visible:
        assert {p.name for p in (ckpts / name).iterdir()} == {
            "adapters.safetensors", "optimizer.safetensors", checkpoint.STATE_FILE,
        }  # fmt: skip
    assert [p.name for p in checkpoint.list_steps(ckpts)] == visible
