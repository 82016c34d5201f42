"""Routing natural requests: training never reads the natural set; phrasing variety generalises."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401

from mlx_mixlora import route as R
from mlx_mixlora.cli import main
from mlx_mixlora.route.session import load_setup
from mlx_mixlora.tasks import load_examples
from mlx_mixlora.tasks import natural as N


@pytest.fixture
def natural_forbidden(monkeypatch):
    """Any read of the natural-request set fails the test."""

    def refuse(*a, **k):
        raise AssertionError("training code read the natural-request set")

    monkeypatch.setattr(N, "read_natural", refuse)


def test_training_paths_never_read_the_natural_set(natural_forbidden, routing_dirs, tmp_path):  # noqa: F811
    model_dir, ads = routing_dirs
    for task in ("classification", "qa", "summarization", "sentiment"):
        load_examples(task, "synthetic", "train", n=50, prompts="varied")
    s = load_setup(model_dir, ads)
    R.build_gate(s.model, s.tokenizer, s.adapters, n_per_task=20, steps=5)
    R.build_centroid(s.model, s.tokenizer, s.adapters, n_per_task=20)
    args = ["gate", "train", "--model", str(model_dir), "--adapters", *ads]
    r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "g"), "--n-per-task", "20"])
    assert r.exit_code == 0, r.output
    with pytest.raises(AssertionError, match="read the natural-request set"):
        R.natural_prompts(["qa"])  # the guard itself works


def test_a_template_only_gate_misroutes_natural_requests_and_a_varied_one_does_not(
    routing_dirs,  # noqa: F811
):
    """The regression behind the issue: 100% on templates said nothing about real requests.

    Tiny random model with a character tokenizer, default feature layer and pooling:
    measured 0.44 (template-only training) vs 0.75 (template + train phrasings) on
    the natural set; chance is 0.25.
    """
    model_dir, ads = routing_dirs
    s = load_setup(model_dir, ads)
    natural = R.natural_prompts(R.adapter_tasks(s.adapters))
    acc = {}
    for style in ("template", "varied"):
        gate = R.build_gate(
            s.model, s.tokenizer, s.adapters, n_per_task=120, steps=200, prompts=style
        )
        acc[style] = R.evaluate_routing(gate, s.model, s.tokenizer, *natural)["accuracy"]
    assert acc["template"] <= 0.5
    assert acc["varied"] >= 0.7


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gate_train_on_a_users_own_routing_jsonl(routing_dirs, tmp_path):  # noqa: F811
    """Tasks the registry does not know: {"prompt", "adapter"} rows are enough."""
    model_dir, ads = routing_dirs
    names = [f"ad{i}" for i in range(4)]
    words = ["apple pear plum", "red green blue", "one two three", "cat dog cow"]
    rows = [
        {"prompt": f"{w.split()[k % 3]} {w.split()[(k + 1) % 3]} {k}", "adapter": n}
        for n, w in zip(names, words, strict=True)
        for k in range(40)
    ]
    data = _rows(tmp_path / "route.jsonl", rows)
    base = ["gate", "train", "--model", str(model_dir), "--adapters", *ads]
    r = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "g"), "--data", str(data)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "g" / "gate.json").read_text())
    assert cfg["train"]["prompts"] == "user" and cfg["train"]["tasks"] is None
    assert cfg["train"]["n"] + cfg["train"]["n_validation"] == 160
    assert cfg["train"]["validation_accuracy"] >= 0.9, r.output
    assert "validation accuracy" in r.output

    per_adapter = tmp_path / "per"
    per_adapter.mkdir()
    for n in names:
        _rows(
            per_adapter / f"{n}.jsonl", [{"prompt": x["prompt"]} for x in rows if x["adapter"] == n]
        )
    r = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "g2"), "--data", str(per_adapter)])
    assert r.exit_code == 0, r.output
    cfg2 = json.loads((tmp_path / "g2" / "gate.json").read_text())
    assert cfg2["train"]["n"] == cfg["train"]["n"]

    bad = _rows(tmp_path / "bad.jsonl", [*rows, {"prompt": "x", "adapter": "summariser"}])
    r = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "g3"), "--data", str(bad)])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        f"error: {bad} row 161: adapter 'summariser' is not one of the gate's adapters {names}"
    ]
    from mlx_mixlora.route.user_data import is_routing_data

    task_rows = _rows(tmp_path / "qa.jsonl", [{"passage": "p", "question": "q", "answer": True}])
    assert is_routing_data(data, names) and not is_routing_data(task_rows, names)
    missing = _rows(tmp_path / "m.jsonl", [x for x in rows if x["adapter"] != "ad2"])
    r = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "g4"), "--data", str(missing)])
    assert r.exit_code == 1 and "no prompts for adapter 'ad2'" in r.output
    assert not (tmp_path / "g3").exists() and not (tmp_path / "g4").exists()
