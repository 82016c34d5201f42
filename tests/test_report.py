"""report.md tables from hand-made results: the numbers shown are the ones computed."""

from __future__ import annotations

from mlx_mixlora.report import retention_table, routing_table


def _results():
    def cell(score, acc=None):
        out = {"score": score}
        if acc is not None:
            out["routing_accuracy"] = acc
        return out

    return {
        "tasks": ["a", "b"],
        "methods": [
            {"name": "merge:x", "kind": "merge"},
            {"name": "merge:y", "kind": "merge"},
            {"name": "route:gate-top1", "kind": "route"},
            {"name": "route:uniform-merge", "kind": "route"},
            {"name": "route:oracle", "kind": "route"},
        ],
        "scores": {
            "merge:x": {"a": cell(0.2), "b": cell(0.4)},
            "merge:y": {"a": cell(0.6), "b": cell(0.4)},
            "route:gate-top1": {"a": cell(0.9, 0.95), "b": cell(0.5, 1.0)},
            "route:uniform-merge": {"a": cell(0.3), "b": cell(0.3)},  # mode all: not routed
            "route:oracle": {"a": cell(1.0, 1.0), "b": cell(0.5, 1.0)},
        },
        "retention": {
            "merge:x": {"a": 0.2, "b": 0.8},
            "merge:y": {"a": 0.6, "b": 0.8},
            "route:gate-top1": {"a": 0.9},
        },
    }


def test_routing_table_rates_each_router_against_the_oracle_and_names_the_best_merge():
    lines = routing_table(_results()).splitlines()
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert list(rows) == [
        "route:gate-top1",
        "route:uniform-merge",
        "route:oracle",
        "merge:y (best static merge)",
    ]
    assert (
        rows["route:gate-top1"]
        == "| route:gate-top1 | 95.0% / 0.900 | 100.0% / 1.000 | 97.5% | 0.950 |"
    )
    # a uniform merge routes nowhere: no routing accuracy, only its scores
    assert rows["route:uniform-merge"].endswith("| – / 0.300 | – / 0.600 | – | 0.450 |")
    assert rows["merge:y (best static merge)"].endswith("| – / 0.600 | – / 0.800 | – | 0.700 |")


def test_retention_means_skip_missing_tasks():
    lines = retention_table(_results()).splitlines()
    assert lines[-1] == "| route:gate-top1 | 0.90 | – | 0.90 |"
    assert routing_table({**_results(), "methods": []}) == ""
