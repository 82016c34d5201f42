"""`mixlora gate train` end to end on a tiny base and four task-labelled adapters."""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401

import mlx_mixlora  # noqa: F401
from mlx_mixlora.cli import main


def test_gate_train_writes_a_gate_that_routes_held_out_prompts(gate_dir):  # noqa: F811
    cfg = json.loads((gate_dir / "gate.json").read_text())
    assert cfg["format"] == "mlx-mixlora/gate"
    assert [a["task"] for a in cfg["adapters"]] == [
        "classification",
        "qa",
        "summarization",
        "sentiment",
    ]
    assert cfg["layer"] == 1  # lowest adapted layer (1), capped at n/2 = 1
    assert cfg["train"]["validation_template_accuracy"] >= 0.99
    assert cfg["train"]["n_validation_template"] == 240
    assert cfg["train"]["n_validation_heldout"] == 240
    print("held-out phrasings:", cfg["train"]["validation_heldout_accuracy"])
    assert cfg["pool"] == "mean" and cfg["train"]["prompts"] == "varied"
    assert cfg["base_model"]["fingerprint"]


def test_gate_train_refuses_existing_output_and_bad_tasks(routing_dirs, tmp_path):  # noqa: F811
    model_dir, ads = routing_dirs

    def gate_train(ads, out, *args):
        cmd = ["gate", "train", "--model", str(model_dir), "--adapters", *ads, "-o", str(out)]
        return CliRunner().invoke(main, [*cmd, *args])

    (tmp_path / "g").mkdir()
    r = gate_train(ads, tmp_path / "g")
    assert r.exit_code == 1 and "already exists" in r.output
    r = gate_train(ads[:2], tmp_path / "h", "--tasks", "qa")
    assert r.exit_code == 1 and "--tasks names 1 tasks for 2 adapters" in r.output
    r = gate_train(ads[:2], tmp_path / "h", "--tasks", "qa,nope")
    assert r.exit_code == 1 and "unknown task 'nope'" in r.output
    assert not (tmp_path / "h").exists()
