"""benchmarks/merge_oracle.py: what each row is fitted on, its arithmetic and its table."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_bench import load_benchmark

from mlx_mixlora.merge.adamerging import DEFAULT_STEPS
from mlx_mixlora.merge.calibration import task_calibration
from mlx_mixlora.tasks import get_task, load_examples

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("classification", "summarization")  # a label task and a generation task


@pytest.fixture(scope="module")
def mo():
    return load_benchmark("merge_oracle")


def _evals(split: str, n: int, seed: int = 1) -> dict[str, list[dict]]:
    return {t: load_examples(get_task(t), "synthetic", split, n=n, seed=seed) for t in TASKS}


def test_examples_become_calibration_rows_exactly_as_task_calibration_builds_them(mo):
    tasks = [get_task(t) for t in TASKS]
    got = mo.calibration_rows(tasks, _evals("validation", 3))
    assert got == task_calibration(tasks, "synthetic", 3, seed=1)
    assert got[0].labels == tuple(get_task("classification").label_names) and got[-1].labels is None


def test_oracle_rows_fit_on_the_test_prompts_and_calib_rows_on_none_of_them(mo):
    tasks = [get_task(t) for t in TASKS]
    evals = _evals("test", 5)
    rows = mo.plan([2, 4], [1, 3])
    assert [r["name"] for r in rows] == ["oracle-test-x1", "oracle-test-x3", "calib-2", "calib-4"]
    assert [r["steps"] for r in rows] == [DEFAULT_STEPS, 3 * DEFAULT_STEPS] + [DEFAULT_STEPS] * 2
    assert [r["cheats"] for r in rows] == [True, True, False, False]
    oracle = mo.row_calibration(rows[0], tasks, evals, seed=1)
    assert [c.prompt for c in oracle] == [e["prompt"] for t in TASKS for e in evals[t]]
    assert [c.answer for c in oracle] == [e["completion"] for t in TASKS for e in evals[t]]
    assert mo.overlap(oracle, evals) == 10
    honest = mo.row_calibration(rows[3], tasks, evals, seed=1)
    assert len(honest) == 8 and mo.overlap(honest, evals) == 0


def test_retention_and_table(mo):
    own = {"classification": 1.0, "qa": 0.5, "summarization": 0.0}
    ret = mo.row_retention({"classification": 0.75, "qa": 0.4, "summarization": 0.1}, own)
    assert ret == pytest.approx({"classification": 0.75, "qa": 0.8})  # own 0: left out
    row = {
        "name": "oracle-test-x3", "fit_on": "test", "cheats": True, "calib_prompts": 400,
        "steps": 180, "retention": ret, "mean_retention": 0.775, "learn_seconds": 612.34,
    }  # fmt: skip
    honest = {**row, "name": "calib-16", "fit_on": "validation", "cheats": False,
              "calib_prompts": 64, "steps": 60, "learn_seconds": 33.2}  # fmt: skip
    table = mo.markdown({"tasks": ["classification", "qa", "summarization"], "rows": [row, honest]})
    lines = table.splitlines()
    assert lines[0] == (
        "| row | fit on | prompts | steps | classification | qa | summarization | mean | learn s |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|"
    assert (
        lines[2]
        == "| oracle-test-x3 | **test (oracle)** | 400 | 180 | 0.75 | 0.80 | — | 0.78 | 612 |"
    )
    assert lines[3] == "| calib-16 | validation | 64 | 60 | 0.75 | 0.80 | — | 0.78 | 33 |"


def test_the_oracle_is_unreachable_from_the_package():
    for path in (ROOT / "mlx_mixlora").rglob("*.py"):
        assert "merge_oracle" not in path.read_text(encoding="utf-8"), path
