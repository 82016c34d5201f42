"""report.md tables from hand-made results: the numbers shown are the ones computed."""

from __future__ import annotations

from mlx_mixlora.demo.report import (
    label_table,
    natural_summary,
    retention_table,
    rouge_table,
    routing_accuracy_table,
    routing_table,
)


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


def test_routing_accuracy_table_lists_each_style_per_task():
    res = _results()
    res["routing_accuracy"] = {
        "route:gate-top1": {
            "template": {"accuracy": 1.0, "n": 8, "per_task": {"a": 1.0, "b": 1.0}},
            "natural": {"accuracy": 0.75, "n": 8, "per_task": {"a": 0.5, "b": None}},
        }
    }
    lines = routing_accuracy_table(res).splitlines()
    assert lines[2] == "| route:gate-top1 | template (n=8) | 100.0% | 100.0% | 100.0% |"
    assert lines[3] == "| route:gate-top1 | natural requests (n=8) | 50.0% | – | 75.0% |"
    assert routing_accuracy_table(_results()) == ""


def test_natural_summary_compares_adapters_to_their_template_scores_and_routers_to_the_oracle():
    res = _results()
    res["methods"] = [
        {"name": "adapter:a", "kind": "adapter"},
        {"name": "adapter:b", "kind": "adapter"},
        {"name": "route:gate-top1", "kind": "route"},
        {"name": "route:oracle", "kind": "route"},
    ]
    res["scores"] |= {"adapter:a": {"a": {"score": 0.8}}, "adapter:b": {"b": {"score": 0.5}}}
    res["natural"] = {
        "scores": {
            "adapter:a": {"a": {"score": 0.6}},
            "adapter:b": {"b": {"score": 0.5}},
            "route:gate-top1": {"a": {"score": 0.3}, "b": {"score": 0.4}},
            "route:oracle": {"a": {"score": 0.6}, "b": {"score": 0.5}},
        }
    }
    lines = natural_summary(res).splitlines()
    assert lines[2] == "| own adapter: natural ÷ template score | 0.750 | 1.000 | 0.875 |"
    assert lines[3] == "| route:gate-top1: routed ÷ oracle | 0.500 | 0.800 | 0.650 |"
    assert len(lines) == 4  # the oracle is not compared with itself


def test_rouge_and_label_tables_show_each_task_kind_with_its_own_metrics():
    res = {
        "tasks": ["cls", "sum"],
        "methods": [{"name": "base"}, {"name": "adapter:sum"}],
        "scores": {
            "base": {
                "cls": {"accuracy_gen": 0.5, "macro_f1_gen": 0.25, "chance": 0.5},
                "sum": {"rouge_1": 0.4, "rouge_2": 0.1, "rouge_l": 0.3},
            },
            "adapter:sum": {
                "cls": {"accuracy_gen": 0.0, "accuracy_ll": 0.75, "chance": 0.5},
                "sum": {"rouge_1": 0.6, "rouge_2": 0.25, "rouge_l": 0.5},
            },
        },
    }
    assert rouge_table(res).splitlines() == [
        "| method | task | rouge_1 | rouge_2 | rouge_l |",
        "|---|---|---|---|---|",
        "| base | sum | 0.400 | 0.100 | 0.300 |",
        "| adapter:sum | sum | 0.600 | 0.250 | 0.500 |",
    ]
    lines = label_table(res).splitlines()
    assert lines[0] == (
        "| method | task | accuracy_gen | macro_f1_gen | accuracy_ll | macro_f1_ll | chance |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[3] == "| adapter:sum | cls | 0.000 | – | 0.750 | – | 0.500 |"


def test_kept_or_run_computes_once_and_says_what_it_read_back(tmp_path):
    from mlx_mixlora.bench.report import kept_or_run

    calls, reused = [], []

    def compute():
        calls.append(1)
        return {"score": 0.5, "n": len(calls)}

    path = tmp_path / "row.json"
    assert kept_or_run(path, compute, reused) == {"score": 0.5, "n": 1} and reused == []
    assert kept_or_run(path, compute, reused) == {"score": 0.5, "n": 1}  # read back, not rerun
    assert calls == [1] and reused == [str(path)]
    assert kept_or_run(None, compute, reused) == {"score": 0.5, "n": 2}  # no --keep: always run
