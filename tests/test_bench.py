"""`mixlora bench`: ratios from medians, report files, bad input, torch-missing skip, same weights."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mlx_mixlora  # noqa: F401  # isort: skip  (BLAS preload before mlx.core)
from mlx_mixlora.bench import report, runner
from mlx_mixlora.bench.rows import row, skipped
from mlx_mixlora.bench.spec import Sizes, prepare
from mlx_mixlora.bench.timing import stats
from mlx_mixlora.cli import main
from mlx_mixlora.errors import MixloraError

TOP_KEYS = {"format", "format_version", "workloads", "backends", "machine", "model", "sizes",
            "rows", "ratios", "notes", "load_average_after", "wall_seconds"}  # fmt: skip
ROW_KEYS = {"workload", "case", "backend", "impl", "metric", "unit", "higher_is_better", "median",
            "min", "max", "q1", "q3", "n", "runs", "peak_memory_gb", "memory_kind"}  # fmt: skip
MACHINE_KEYS = {"os", "chip", "cpus", "mlx_device", "blas", "versions", "command", "load_average"}


def synthetic_rows() -> list[dict]:
    return [
        row("decode", "base", "mlx", "tokens_per_s", [10, 14, 12], "ours", 0.5, "mlx peak"),
        row("decode", "base", "torch", "tokens_per_s", [4, 8, 6, 5], "torch"),
        row("merge", "svd", "mlx", "seconds", [1.0, 3.0, 2.0], "ours"),
        row("merge", "svd", "peft", "seconds", [7.0, 5.0, 6.0], "peft"),
        row("merge", "cat", "peft", "seconds", [1.0], "peft"),  # no ours row: no ratio
        skipped("route", "peft", "torch not installed"),
    ]


def synthetic_result(rows: list[dict]) -> dict:
    return {
        "format": "mlx-mixlora/bench",
        "format_version": 1,
        "workloads": ["decode", "merge", "route"],
        "backends": ["mlx", "torch", "peft"],
        "machine": {
            "command": "mixlora bench x",
            "chip": "chip",
            "cpus": 2,
            "memory_gb": 1,
            "os": "os",
            "machine": "m",
            "mlx_device": "cpu",
            "blas": "b",
            "date_utc": "d",
            "load_average": [1.0],
            "versions": {"mlx": "1"},
        },  # fmt: skip
        "model": {"source": "random", "dtype": "float32"},
        "sizes": {"repeats": 3, "warmup": 1},
        "rows": rows,
        "ratios": report.ratios(rows),
        "notes": ["a note"],
        "load_average_after": [1.0],
        "wall_seconds": 1.0,
    }


def test_stats_median_spread_and_quartiles():
    s = stats([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["q1"], s["q3"], s["n"]) == (
        3.0,
        1.0,
        5.0,
        2.0,
        4.0,
        5,
    )
    assert s["runs"] == [5.0, 1.0, 3.0, 2.0, 4.0]  # in run order
    with pytest.raises(ValueError):
        stats([])


def test_ratios_come_from_the_medians():
    rats = {(r["workload"], r["case"], r["peer"]): r for r in report.ratios(synthetic_rows())}
    assert set(rats) == {("decode", "base", "torch"), ("merge", "svd", "peft")}
    # throughput: ours / peer = 12 / 5.5; seconds: peer / ours = 6 / 2
    assert rats[("decode", "base", "torch")]["speedup"] == pytest.approx(12 / 5.5)
    assert rats[("merge", "svd", "peft")]["speedup"] == pytest.approx(3.0)
    assert rats[("merge", "svd", "peft")]["peer_median"] == 6.0
    # best runs: max tokens/s 14 / 8; min seconds 5 / 1
    assert rats[("decode", "base", "torch")]["speedup_best"] == pytest.approx(14 / 8)
    assert rats[("merge", "svd", "peft")]["speedup_best"] == pytest.approx(5.0)


def test_report_writes_json_markdown_and_png(tmp_path):
    res = synthetic_result(synthetic_rows())
    out = report.write_report(tmp_path / "r", res)
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert json.loads((out / "bench.json").read_text())["ratios"] == res["ratios"]
    md = (out / "bench.md").read_text()
    assert "`mixlora bench x`" in md
    assert (
        "| merge | svd | s | 2.00 (1.00–3.00) | — | 6.00 (5.00–7.00) | 3.00× (5.00×) vs torch+PEFT |"
        in md
    )
    assert "- peft route: torch not installed" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(MixloraError, match="already exists"):
        report.write_report(tmp_path / "r", res)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"workloads": "train,bogus"}, "unknown workload 'bogus'"),
        ({"backends": "mlx,jax"}, "unknown backend 'jax'"),
        ({"backends": ""}, "no backend given"),
        ({"model": "MISSING"}, "model directory not found"),
        ({"layers": 0}, "--layers must be >= 1"),
        ({"shape": "gpt2"}, "unknown shape 'gpt2'"),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
        ({"model": "MODEL", "layers": 2}, "--layers applies to the random model only"),
    ],
)
def test_bad_input_is_one_error_and_no_output(tmp_path, kw, msg):
    kw = dict(kw)
    if kw.get("model") == "MISSING":
        kw["model"] = str(tmp_path / "nope")
    elif kw.get("model") == "MODEL":
        kw["model"] = str(tmp_path)
    args = {"workloads": "decode", "backends": "mlx", "out": tmp_path / "out", **kw}
    with pytest.raises(MixloraError, match=msg):
        runner.run_bench(**args)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_bad_workload_prints_one_error_line(tmp_path):
    res = CliRunner().invoke(main, ["bench", "decode,nope", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "error: unknown workload 'nope'; use train, prefill, decode, merge, route or all"
    ]
    assert not (tmp_path / "o").exists()


def test_existing_output_refused_before_any_work(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(MixloraError, match="already exists"):
        runner.run_bench("decode", "mlx", tmp_path / "out", quick=True)


@pytest.fixture
def no_torch_in_workers(tmp_path, monkeypatch):
    """Worker processes start without torch, as on a machine where it is not installed.

    Python runs `sitecustomize` from PYTHONPATH at start-up: ours makes `import torch` fail.
    """
    hook = tmp_path / "no_torch"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import sys\n\nsys.modules['torch'] = None\n")
    path = filter(None, [str(hook), os.environ.get("PYTHONPATH")])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))


def test_without_torch_the_torch_rows_are_skipped(tmp_path, monkeypatch, no_torch_in_workers):
    """A real quick run (merge: fastest workload) with torch hidden from the workers."""
    out = tmp_path / "b"
    args = ["bench", "merge", "--quick", "--backends", "mlx,torch,peft", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/mixlora", *args])  # as the console script sees it
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "bench.json").read_text())
    assert TOP_KEYS <= set(data)
    assert MACHINE_KEYS <= set(data["machine"])
    assert data["machine"]["command"] == "mixlora " + " ".join(args)
    rows = data["rows"]
    ours = [r for r in rows if r["backend"] == "mlx"]
    assert sorted(r["case"] for r in ours) == ["cat", "svd", "ties_svd"]
    for r in ours:
        assert ROW_KEYS <= set(r)
        assert (
            r["n"] == Sizes.quick().repeats and r["min"] <= r["median"] <= r["max"] and r["min"] > 0
        )
    # torch has no merge row; peft's merge rows are skipped, not crashed
    others = [
        {k: v for k, v in r.items() if k != "load_average"} for r in rows if r["backend"] != "mlx"
    ]
    assert others == [
        {"workload": "merge", "case": "*", "backend": "peft", "skipped": "torch not installed"}
    ]
    assert data["ratios"] == []
    assert "peft merge: torch not installed" in (out / "bench.md").read_text()
    assert (out / "bench.png").is_file()
    assert "random weights" in data["model"]["source"]


def test_every_backend_gets_the_same_weights_and_adapters(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    import mlx.core as mx
    from mlx_mixlora.convert.peft import import_peft

    from mlx_mixlora.bench.mlx_backend import load_spec_model
    from mlx_mixlora.bench.torch_backend import load_torch_model

    spec = prepare(tmp_path, Sizes.quick(), "tiny")
    ids = spec.arrays()["prefill"]
    ours = np.array(load_spec_model(spec)(mx.array(ids)))
    with torch.inference_mode():
        theirs = load_torch_model(spec.hf_dir).eval()(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)
    from mlx_mixlora.adapter_format import load_adapter

    cfg, w = load_adapter(spec.adapters[1])
    back = import_peft(spec.peft_adapters[1], tmp_path / "back")
    cfg2, w2 = load_adapter(back)
    assert cfg2.rank == cfg.rank and cfg2.alpha == cfg.alpha
    for k in w:
        np.testing.assert_array_equal(np.array(w[k]), np.array(w2[k]))


@pytest.mark.slow
def test_quick_run_every_backend_every_workload(tmp_path):
    res = runner.run_bench("all", "mlx,mlx-lm,torch,peft", tmp_path / "b", quick=True)
    measured = {(r["workload"], r["case"], r["backend"]) for r in res["rows"] if "median" in r}
    assert [r for r in res["rows"] if "median" not in r] == []
    assert {("train", "lora", b) for b in ("mlx", "mlx-lm", "peft")} <= measured
    assert {("decode", c, "mlx") for c in ("base", "fused", "routed")} <= measured
    assert {("route", "mixed", "mlx"), ("route", "mixed", "peft")} <= measured
    assert len(res["ratios"]) >= 10


def test_m1_reference_limits_match_the_issue_for_tinyllama():
    from mlx_mixlora.bench.reference import m1_limits, param_count
    from mlx_mixlora.bench.spec import TINYLLAMA

    assert param_count(TINYLLAMA)["total"] == 1_100_048_384  # TinyLlama-1.1B's parameter count
    ref = m1_limits(TINYLLAMA)
    assert round(ref["decode_fp16_tokens_per_s"]) == 33
    assert round(ref["lora_train_fp32_tokens_per_s"], -1) == 590


def test_run_json_reads_the_answer_and_never_a_stale_one(tmp_path):
    from mlx_mixlora.bench.process import run_json

    out = tmp_path / "r.json"
    out.write_text('{"stale": true}')
    write = f"import json, time; time.sleep(0.2); json.dump({{'ok': 1}}, open({str(out)!r}, 'w'))"
    res, wall = run_json([sys.executable, "-c", write], out)
    assert res == {"ok": 1} and 0.2 <= wall < 30
    out.write_text('{"stale": true}')
    res, _ = run_json(
        [sys.executable, "-c", "import sys; print('x', file=sys.stderr); sys.exit(3)"], out
    )
    assert res == {"error": "x"} and not out.exists()
    res, _ = run_json([sys.executable, "-c", "import sys; sys.exit(3)"], out)
    assert res == {"error": "exit code 3"}
    res, _ = run_json([sys.executable, "-c", "import time; time.sleep(30)"], out, timeout=1)
    assert res == {"error": "timed out after 1 s"}


def test_peers_run_as_they_ship(monkeypatch):
    from mlx_mixlora.bench.process import peer_env

    monkeypatch.delenv("MIXLORA_BLAS", raising=False)
    monkeypatch.delenv("MIXLORA_NO_MALLOC_TUNING", raising=False)
    ours, torch, mlx_lm_heap = (
        peer_env(True),
        peer_env(False, torch=True),
        peer_env(False, heap=True),
    )
    assert "MIXLORA_NO_MALLOC_TUNING" not in ours and "MIXLORA_BLAS" not in ours
    assert torch["MIXLORA_BLAS"] == "reference" and torch["MIXLORA_NO_MALLOC_TUNING"] == "1"
    assert "MIXLORA_NO_MALLOC_TUNING" not in mlx_lm_heap


@pytest.mark.slow
def test_quick_without_out_writes_to_a_temp_dir_not_the_working_dir(tmp_path, monkeypatch):
    """A smoke test is not a result: it never lands in ./benchmarks/results/."""
    import tempfile

    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    res = CliRunner().invoke(main, ["bench", "merge", "--quick", "--backends", "mlx"])
    assert res.exit_code == 0, res.output
    assert list(work.iterdir()) == []
    wrote = res.output.strip().splitlines()[-1]
    out = Path(wrote.split()[1].removesuffix("/bench.json,"))
    assert out.parent.parent == tmp and (out / "bench.json").is_file()
