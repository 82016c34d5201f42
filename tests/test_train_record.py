"""Batching users can predict (an iteration is --batch-size examples, packed or not) and the
training record (Iter lines, metrics.jsonl, resume without duplicates, `mixlora plot`)."""

from __future__ import annotations

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload must come before mlx.core)

# isort: on
import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_train import CharTokenizer, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_mixlora.cli import main as cli
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.train import TrainConfig, train_adapter, trainer
from mlx_mixlora.train.batching import epoch_rows, run_totals
from mlx_mixlora.train.data import prepare
from mlx_mixlora.train.metrics import read_metrics

TOK = CharTokenizer()


def _mixed(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt": "".join(rng.choice(list("abcdefgh "), size=int(rng.integers(3, 30)))),
            "completion": "".join(rng.choice(list("xyz"), size=int(rng.integers(1, 4)))),
        }
        for _ in range(n)
    ]


def _counting(monkeypatch):
    """Count the examples (and rows) of every batch the trainer lays out."""
    seen = {"examples": 0, "rows": 0, "calls": 0}
    real = trainer.make_batch

    def counted(items, rows, max_len, packed):
        seen["examples"] += sum(len(r) for r in rows)
        seen["rows"] += len(rows)
        seen["calls"] += 1
        return real(items, rows, max_len, packed)

    monkeypatch.setattr(trainer, "make_batch", counted)
    return seen


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize("pack", [True, False])
def test_iters_times_batch_size_examples_packed_or_not(monkeypatch, pack):
    rows = [{"prompt": f"abc {i} =", "completion": f" {i % 5}"} for i in range(40)]
    seen = _counting(monkeypatch)
    n, b = 7, 8  # 40 examples = 5 batches an epoch: the run crosses into a second epoch
    cfg = TrainConfig(rank=2, iters=n, batch_size=b, max_seq_len=128, pack=pack, streams=1)
    res = train_adapter((tiny_model(), TOK), rows, None, cfg, progress=False)
    assert res.steps == n
    assert seen["examples"] == n * b == 56
    if pack:  # 8 short examples fit one 128-token row: packing removed the padding rows
        assert seen["rows"] == n
    else:
        assert seen["rows"] == n * b
    items, _ = prepare(rows, TOK, 128)
    assert run_totals(items, b, 128, 0, n)[0] == n * b


def test_a_packed_step_trains_on_the_unpacked_steps_examples():
    items, _ = prepare(_mixed(50), TOK, 64)
    for seed, epoch in [(0, 0), (3, 1)]:
        packed = epoch_rows(items, 6, 64, True, seed, epoch)
        plain = epoch_rows(items, 6, 64, False, seed, epoch)
        assert len(packed) == len(plain) == 9
        for p, u in zip(packed, plain, strict=True):
            assert sorted(i for row in p for i in row) == sorted(r[0] for r in u)
            assert len(p) <= len(u)
            assert all(sum(len(items[i].ids) - 1 for i in row) <= 64 for row in p)
    assert sum(len(b) for b in epoch_rows(items, 6, 64, True, 0, 0)) < 50


def test_packed_and_unpacked_runs_have_the_same_losses():
    """Packing only removes padding: same examples per step, so the same loss curve."""
    exs = _mixed(24)
    runs = []
    for pack in (True, False):
        cfg = TrainConfig(rank=4, alpha=8, iters=8, batch_size=6, max_seq_len=64, lr=1e-2,
                          pack=pack, streams=1, seed=1)  # fmt: skip
        res = train_adapter((tiny_model(), TOK), exs, None, cfg, progress=False)
        runs.append([h["loss"] for h in res.history])
    assert runs[0][-1] < runs[0][0] - 0.5  # it learned something
    np.testing.assert_allclose(runs[0], runs[1], rtol=2e-4)


# Pinned before the batching change (commit e55a3fa): the unpacked plan the shipped recipes
# and the demo use, and a tiny unpacked run's losses. Both must never move.
UNPACKED_PLAN_SHA = "89bbace9ec46a30f1795cdd7ee0ced27fb96e31a12b8a6ad7a18677a758df77c"
UNPACKED_LOSSES = {
    0.1: [4.578909397125244, 4.066416263580322, 2.8596200942993164, 2.9176247119903564,
          2.5944981575012207, 2.3913674354553223, 2.47654390335083, 2.4202098846435547,
          2.5360307693481445],
    0.0: [4.578908920288086, 4.028101444244385, 2.758788824081421, 2.772071361541748,
          2.536395788192749, 2.3712222576141357, 2.4065160751342773, 2.3932716846466064,
          2.5693485736846924],
}  # fmt: skip


def test_unpacked_batches_and_losses_are_pinned(tmp_path):
    items, _ = prepare(_mixed(22), TOK, 64)
    plans = {
        f"{s}/{e}/{b}": epoch_rows(items, b, 64, False, s, e)
        for s in (0, 7)
        for e in (0, 1)
        for b in (3, 4)
    }
    assert hashlib.sha256(json.dumps(plans).encode()).hexdigest() == UNPACKED_PLAN_SHA
    for dropout, expected in UNPACKED_LOSSES.items():
        cfg = TrainConfig(rank=4, alpha=8, iters=9, batch_size=4, pack=False, max_seq_len=64,
                          lr=1e-2, dropout=dropout, seed=3)  # fmt: skip
        res = train_adapter((tiny_model(), TOK), _mixed(22), None, cfg, progress=False)
        # bit-identical on the machine that pinned them; 1e-5 leaves room for other BLAS kernels
        np.testing.assert_allclose([h["loss"] for h in res.history], expected, rtol=1e-5)


def test_epochs_count_examples_and_the_plan_line_says_so(capsys):
    rows = [{"prompt": f"abc {i} =", "completion": f" {i % 5}"} for i in range(30)]
    cfg = TrainConfig(rank=2, epochs=2, batch_size=4, max_seq_len=64, pack=True, streams=1)
    res = train_adapter((tiny_model(), TOK), rows, None, cfg, progress=True)
    assert res.steps == 16  # ceil(30 / 4) batches an epoch, the last one of 2 examples
    err = capsys.readouterr().err
    tokens = sum(
        len(TOK.encode(r["prompt"])) + len(TOK.encode(r["completion"], False)) for r in rows
    )
    assert (
        f"plan: 16 steps x 4 examples (packed into rows) = 60 examples, {2 * tokens} tokens, "
        "2.00 epochs of 30 examples" in err
    )
    assert "estimated time: " in err


# ---------------------------------------------------------------- training record


def test_metrics_jsonl_and_iter_lines(tmp_path, capsys):
    exs = _mixed(24)
    cfg = TrainConfig(rank=4, iters=12, batch_size=4, max_seq_len=64, lr=1e-2,
                      steps_per_report=5, val_every=10, streams=1)  # fmt: skip
    res = train_adapter(
        (tiny_model(), TOK), exs, tmp_path / "ad", cfg, progress=True, val_data=exs[:6]
    )
    recs = read_metrics(tmp_path / "ad")
    assert recs == res.metrics
    assert [r["step"] for r in recs] == [5, 10, 12]
    losses = [h["loss"] for h in res.history]
    assert recs[0]["train_loss"] == pytest.approx(np.mean(losses[:5]), rel=1e-12)
    assert recs[2]["train_loss"] == pytest.approx(np.mean(losses[10:]), rel=1e-12)
    assert "val_loss" not in recs[0] and recs[2]["val_loss"] == res.val_loss
    assert recs[1]["val_loss"] == res.history[9]["val_loss"]
    assert recs[2]["trained_tokens"] == res.tokens
    for r in recs:
        assert r["lr"] > 0 and r["tokens_per_s"] > 0 and r["peak_mem_gb"] > 0
    err = capsys.readouterr().err
    assert f"Iter 5: Train loss {recs[0]['train_loss']:.3f}, Learning Rate " in err
    assert f"Iter 12: Val loss {res.val_loss:.3f}, Val took " in err
    assert "Tokens/sec" in err and "Peak mem" in err
    assert not (tmp_path / "ad.checkpoints").exists()  # no checkpoints asked for, nothing beside


def test_resume_continues_the_record_without_duplicates(tmp_path):
    exs = _mixed(24)
    cfg = TrainConfig(rank=4, iters=12, batch_size=4, max_seq_len=64, lr=1e-2,
                      steps_per_report=4, save_every=3, val_every=6, streams=1)  # fmt: skip
    train_adapter((tiny_model(), TOK), exs, tmp_path / "s", cfg, progress=False, val_data=exs[:4])
    out = tmp_path / "r"
    part = train_adapter(
        (tiny_model(), TOK), exs, out, cfg, progress=False, val_data=exs[:4], stop_at=10
    )
    assert part.stopped_early and [r["step"] for r in part.metrics] == [4, 6, 8, 10]
    live = tmp_path / "r.checkpoints" / "metrics.jsonl"
    assert [r["step"] for r in read_metrics(live)] == [4, 6, 8, 10]
    # as if killed after step 10's line but before its checkpoint: step 10 replays from 9
    shutil.rmtree(tmp_path / "r.checkpoints" / "step_0000010")
    done = train_adapter(
        (tiny_model(), TOK), exs, out, cfg, progress=False, val_data=exs[:4], resume=True
    )
    final = read_metrics(out)
    assert [r["step"] for r in final] == [4, 6, 8, 12] == [r["step"] for r in done.metrics]
    assert read_metrics(live) == final
    fields = ("step", "train_loss", "val_loss", "lr", "trained_tokens")
    same = lambda recs: [{k: r[k] for k in fields if k in r} for r in recs]  # noqa: E731
    assert same(final) == same(read_metrics(tmp_path / "s"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_read_metrics_accepts_records_or_says_one_error(tmp_path, blob):
    f = tmp_path / "m.jsonl"
    f.write_bytes(blob)
    try:
        recs = read_metrics(f)
    except MixloraError as e:
        assert "\n" not in str(e)
    else:
        assert recs and all(isinstance(r["step"], int) for r in recs)


def test_plot_draws_runs_and_refuses_bad_records(tmp_path):
    exs = _mixed(12)
    for name in ("a", "b"):
        cfg = TrainConfig(rank=2, iters=6, batch_size=4, max_seq_len=64, steps_per_report=2,
                          seed=0 if name == "a" else 1)  # fmt: skip
        train_adapter((tiny_model(), TOK), exs, tmp_path / name, cfg, progress=False)
    runner = CliRunner()
    out = tmp_path / "curves.png"
    r = runner.invoke(cli, ["plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "tr')
    for bad, match in [
        (tmp_path / "missing", "no training record"),
        (tmp_path / "bad.jsonl", "bad.jsonl:2: not a JSON line"),
    ]:
        r = runner.invoke(
            cli, ["plot", str(tmp_path / "a"), str(bad), "-o", str(tmp_path / "x.png")]
        )
        assert r.exit_code != 0 and match in r.output
        assert r.output.count("error:") == 1 and "Traceback" not in r.output
        assert not (tmp_path / "x.png").exists()


def test_steps_per_report_must_be_positive(tmp_path):
    with pytest.raises(MixloraError, match="steps_per_report must be >= 1"):
        TrainConfig(steps_per_report=0).validate()
    r = CliRunner().invoke(cli, ["train", "--model", str(tmp_path), "--data", str(tmp_path / "d"),
                                 "--out", str(tmp_path / "o"), "--steps-per-report", "0"])  # fmt: skip
    assert r.exit_code != 0 and "--steps-per-report" in r.output and "Traceback" not in r.output
