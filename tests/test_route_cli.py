"""`mixlora route eval`: accuracy table, routing.json and plots, written atomically."""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401

import mlx_mixlora  # noqa: F401
from mlx_mixlora.cli import main


def route_eval(model_dir, ads, out, options: str, gate=None):
    """Run `mixlora route eval --model M --adapters A... [--gate G] OPTIONS -o OUT`."""
    args = ["route", "eval", "--model", str(model_dir), "--adapters", *ads, *options.split()]
    args += ["--gate", str(gate)] if gate else []
    return CliRunner().invoke(main, [*args, "-o", str(out)])


def test_route_eval_writes_accuracy_confusion_and_plots(routing_dirs, gate_dir, tmp_path):  # noqa: F811
    model_dir, ads = routing_dirs
    out = tmp_path / "eval"
    options = "--routers gate,centroid,oracle,uniform --n 25 --n-train 80"
    r = route_eval(model_dir, ads, out, options, gate=gate_dir)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "routing.json").read_text())
    res = rep["results"]
    assert res["gate"]["accuracy"] >= 0.99 and res["oracle"]["accuracy"] == 1.0
    assert res["centroid"]["accuracy"] >= 0.9
    conf = res["gate"]["confusion"]
    assert len(conf) == 4 and len(conf[0]) == 5 and sum(map(sum, conf)) == 100
    assert sum(conf[i][i] for i in range(4)) == round(100 * res["gate"]["accuracy"])
    for k in ("gate", "centroid", "oracle", "uniform"):
        assert (out / f"confusion_{k}.png").stat().st_size > 1000
        assert (out / f"weights_{k}.png").stat().st_size > 1000
    assert "gate" in r.output and "%" in r.output


def test_route_eval_refuses_unknown_router_without_output(routing_dirs, tmp_path):  # noqa: F811
    model_dir, ads = routing_dirs
    out = tmp_path / "eval"
    r = route_eval(model_dir, ads, out, "--routers magic")
    assert r.exit_code == 1 and "unknown router 'magic'" in r.output
    r = route_eval(model_dir, ads, out, "--routers gate")
    assert r.exit_code == 1 and "needs --gate" in r.output
    assert not out.exists()


def test_route_eval_scores_equal_oracle(routing_dirs, gate_dir, tmp_path):  # noqa: F811
    model_dir, ads = routing_dirs
    out = tmp_path / "eval"
    options = "--routers gate,uniform --n 10 --score 3 --no-plots"
    r = route_eval(model_dir, ads, out, options, gate=gate_dir)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "routing.json").read_text())
    sc = rep["scores"]
    assert set(sc) == {"gate", "uniform", "oracle"}
    assert set(sc["gate"]["tasks"]) == {"classification", "qa", "summarization", "sentiment"}
    assert all(v["routing_accuracy"] == 1.0 for v in sc["gate"]["tasks"].values())
    # same routes, same fused weights, same scores
    assert sc["gate"]["tasks"] == sc["oracle"]["tasks"]
    assert sc["gate"]["mean"] == sc["oracle"]["mean"]
    # all adapters merged (top weight: first)
    assert sc["uniform"]["tasks"]["qa"]["routed_to"] == {"0": 3}
    assert not list(out.glob("*.png"))
