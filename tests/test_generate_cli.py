"""`mixlora generate`: single prompt and jsonl batch mode, with the routing shown."""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401

import mlx_mixlora  # noqa: F401
from mlx_mixlora.cli import main

SENTIMENT = "Review: a warm and charming film .\nSentiment (positive or negative):"
NEWS = "News: The bank sold shares on monday.\nTopic (World, Sports, Business or Sci/Tech):"


def generate(model_dir, ads, *args, gate=None):
    """Run `mixlora generate --model M --adapters A... [--gate G] ARGS`."""
    base = ["generate", "--model", str(model_dir), "--adapters", *ads]
    return CliRunner().invoke(main, [*base, *(["--gate", str(gate)] if gate else []), *args])


def test_generate_prints_choice_weights_and_answer(routing_dirs, gate_dir):  # noqa: F811
    model_dir, ads = routing_dirs
    r = generate(model_dir, ads, "--prompt", SENTIMENT, "--max-tokens", "5", gate=gate_dir)
    assert r.exit_code == 0, r.output
    first, *rest = r.output.splitlines()
    assert first.startswith("adapter: ad3  (gate weights: ad0=")
    weights = [float(x.split("=")[1].rstrip(")")) for x in first.split("weights: ")[1].split(", ")]
    assert abs(sum(weights) - 1) < 2e-3 and max(weights) == weights[3]
    assert rest and rest[0].strip()
    assert r.output.endswith("\n")  # the shell prompt starts on its own line


def test_generate_batch_jsonl(routing_dirs, gate_dir, tmp_path):  # noqa: F811
    model_dir, ads = routing_dirs
    src = tmp_path / "p.jsonl"
    src.write_text(
        json.dumps({"prompt": NEWS, "id": 1}) + "\n" + json.dumps({"prompt": SENTIMENT}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    r = generate(
        model_dir, ads, "--jsonl", str(src), "-o", str(out), "--max-tokens", "3", gate=gate_dir
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["adapter"] for x in rows] == ["ad0", "ad3"]
    assert rows[0]["id"] == 1 and isinstance(rows[1]["generation"], str)


def test_generate_errors(routing_dirs, gate_dir, tmp_path):  # noqa: F811
    model_dir, ads = routing_dirs
    r = generate(model_dir, ads, gate=gate_dir)
    assert r.exit_code == 1 and "exactly one of --prompt or --jsonl" in r.output
    r = generate(model_dir, ads[:-1], "--prompt", "x", gate=gate_dir)
    assert r.exit_code == 1 and "trained for adapters" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt"}\n')
    r = generate(model_dir, ads, "--router", "arrow", "--jsonl", str(bad))
    assert r.exit_code == 1 and "has no non-empty 'prompt'" in r.output
    r = generate(model_dir, ads, "--router", "gate", "--prompt", "x")
    assert r.exit_code == 1 and "needs --gate" in r.output


def test_batch_modes_agree(routing_dirs, gate_dir, tmp_path):  # noqa: F811
    """Mixed-adapter batches and one-prompt-at-a-time fused generation give the same greedy text."""
    model_dir, ads = routing_dirs
    src = tmp_path / "p.jsonl"
    src.write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in (NEWS, SENTIMENT, NEWS + " x"))
    )
    outs = {}
    for bs in ("8", "1"):
        out = tmp_path / f"out{bs}.jsonl"
        args = ["--jsonl", str(src), "-o", str(out), "--max-tokens", "4", "--batch-size", bs]
        r = generate(model_dir, ads, *args, gate=gate_dir)
        assert r.exit_code == 0, r.output
        outs[bs] = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["adapter"] for x in outs["8"]] == ["ad0", "ad3", "ad0"]
    assert [x["generation"] for x in outs["8"]] == [x["generation"] for x in outs["1"]]
