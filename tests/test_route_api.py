"""The Python API the demo uses: route_prompts, evaluate_routing, threshold fallback."""

from __future__ import annotations

import numpy as np
from helpers_route_cli import gate_dir, routing_dirs  # noqa: F401

from mlx_mixlora import route as R


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
