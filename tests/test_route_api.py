"""The Python API the demo uses: route_prompts, evaluate_routing, threshold fallback, ROUTERS."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401

from mlx_mixlora import route as R
from mlx_mixlora.cli import main
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.route.embed import encode_prompts


def test_route_prompts_and_threshold_fallback(routing_dirs, gate_dir):  # noqa: F811
    model_dir, ads = routing_dirs
    s = R.load_setup(model_dir, ads)
    gate = R.load_gate_router(gate_dir, s.adapters)
    prompts, labels = R.labelled_prompts(R.adapter_tasks(s.adapters), "test", 8)
    assert R.route_prompts(gate, s.model, s.tokenizer, prompts) == labels
    res = R.evaluate_routing(gate, s.model, s.tokenizer, prompts, labels)
    assert res["accuracy"] == 1.0 and np.trace(np.array(res["confusion"])) == 32
    # a threshold above 1 sends every prompt to the base: the confusion's last column
    res = R.evaluate_routing(
        gate, s.model, s.tokenizer, prompts, labels, mode="threshold", threshold=1.01
    )
    assert res["chosen"] == [-1] * 32 and [row[-1] for row in res["confusion"]] == [8] * 4
    # the centroid router on the same features agrees; the oracle is the labels themselves
    cen = R.build_centroid(s.model, s.tokenizer, s.adapters, layer=gate.layer, n_per_task=60)
    assert np.mean(np.array(R.route_prompts(cen, s.model, s.tokenizer, prompts)) == labels) >= 0.9
    assert (
        R.route_prompts(R.OracleRouter(4), s.model, s.tokenizer, prompts, labels=labels) == labels
    )


def test_every_router_of_the_table_builds_by_name_and_gives_weights(routing_dirs, gate_dir):  # noqa: F811
    model_dir, ads = routing_dirs
    s = R.load_setup(model_dir, ads)
    prompts, labels = R.labelled_prompts(R.adapter_tasks(s.adapters), "test", 3)
    toks = encode_prompts(s.tokenizer, prompts)
    for name in R.ROUTERS:
        router = R.make_router(name, s, gate_dir=gate_dir, n_per_task=40)
        assert router.name == name and router.n_adapters == 4
        p = router.probs(s.model, toks, labels=labels)
        assert p.shape == (12, 4) and np.allclose(p.sum(axis=1), 1.0)
    with pytest.raises(MixloraError, match="unknown router 'magic'; use gate, centroid, arrow"):
        R.make_router("magic", s)


def test_the_cli_offers_the_table_s_routers():
    """`generate` offers the routers that need no labels and fit nothing at start-up."""
    out = CliRunner().invoke(main, ["generate", "--help"]).output
    assert "--router [gate|arrow|uniform]" in out
    assert [k for k, v in R.ROUTERS.items() if v.routes] == ["gate", "centroid", "arrow"]
    assert R.ROUTERS["uniform"].mode == "all" and R.ROUTERS["oracle"].needs_labels


def test_routed_scores_carry_every_per_example_metric(routing_dirs):  # noqa: F811
    """A routed summarization row has ROUGE-1/2/L, each the example-weighted mean of its groups:
    with the oracle every prompt is on its own adapter, so they equal that adapter's own scores."""
    from mlx_mixlora.lora import detach_lora, load_adapter_into
    from mlx_mixlora.scoring import score_task
    from mlx_mixlora.tasks import get_task, load_examples

    model_dir, ads = routing_dirs
    s = R.load_setup(model_dir, ads)
    task = get_task("summarization")
    own = next(i for i, a in enumerate(s.adapters) if a.task == "summarization")
    examples = load_examples(task, "synthetic", "test", n=4)
    routed = R.score_routed(
        s.model, s.tokenizer, task, examples, R.OracleRouter(len(s.adapters)), s.adapters, own
    )
    load_adapter_into(s.model, ads[own])
    direct = score_task(s.model, s.tokenizer, task, examples)
    detach_lora(s.model)
    for key in ("rouge_1", "rouge_2", "rouge_l", "score"):
        assert routed[key] == pytest.approx(direct[key], abs=1e-6), key
    assert routed["routing_accuracy"] == 1.0
