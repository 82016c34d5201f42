"""benchmarks/recipe_robustness.py: what it trains, what it scores and its arithmetic."""

from __future__ import annotations

import dataclasses
import math

import pytest
from helpers_bench import load_benchmark
from helpers_train import tiny_bpe_llama

from mlx_mixlora.scoring import adapter_method, score_task
from mlx_mixlora.tasks import get_task
from mlx_mixlora.tasks.natural import natural_examples


@pytest.fixture(scope="module")
def rr():
    return load_benchmark("recipe_robustness")


def _run(task, seed, template, heldout, natural):
    return {
        "task": task,
        "seed": seed,
        "template": template,
        "heldout": heldout,
        "natural": natural,
        "natural_over_template": None if template == 0 else round(natural / template, 4),
    }


def test_ratio_is_natural_over_template_and_none_without_a_template_score(rr):
    assert rr.ratio(43 / 48, 1.0) == 0.8958
    assert rr.ratio(0.45, 0.5) == 0.9
    assert rr.ratio(0.3, 0.0) is None


def test_summary_per_task_over_seeds(rr):
    runs = [
        _run("sentiment", 0, 1.0, 0.96, 0.8958),
        _run("sentiment", 1, 0.99, 0.9, 0.9375),
        _run("sentiment", 2, 1.0, 0.94, 0.9167),
        _run("qa", 0, 0.0, 0.1, 0.2),
    ]
    s = rr.summarise(runs)
    assert list(s) == ["sentiment", "qa"]
    sent = s["sentiment"]
    assert sent["seeds"] == [0, 1, 2]
    assert sent["template"] == {"mean": 0.9967, "min": 0.99, "max": 1.0}
    assert sent["heldout"] == {"mean": 0.9333, "min": 0.9, "max": 0.96}
    assert sent["natural_over_template"] == {"mean": 0.9198, "min": 0.8958, "max": 0.947}
    assert sent["seeds_meeting_target"] == 2  # 0.947 and 0.9167 ≥ 0.9; 0.8958 is not
    # a seed without a template score has no ratio: left out of the mean, not counted as 0
    assert "natural_over_template" not in s["qa"] and s["qa"]["seeds_meeting_target"] == 0
    table = rr.markdown({"runs": runs, "summary": s})
    assert "| sentiment | 1 | 0.99 | 0.90 | 0.938 | 0.947 |" in table
    assert "| qa | 0 | 0.00 | 0.10 | 0.200 | — |" in table
    assert "| sentiment | mean (min-max) | 0.997 (0.990-1.000) |" in table


def test_fingerprint_names_the_train_phrasings(rr):
    task = get_task("sentiment")
    fp = rr.phrasings_fingerprint(task)
    assert len(fp) == 12 and fp == rr.phrasings_fingerprint(get_task("sentiment"))
    fewer = dataclasses.replace(task, phrasings=task.phrasings[:-1])
    assert rr.phrasings_fingerprint(fewer) != fp
    assert rr.phrasings_fingerprint(get_task("classification")) != fp


def test_eval_sets_are_the_seed_test_split_in_two_styles_and_the_natural_set(rr):
    task = get_task("sentiment")
    sets = rr.eval_sets(task, seed=1, n_eval=20)
    assert [len(sets[k]) for k in ("template", "heldout")] == [20, 20]
    # same rows, same answers; only the wording differs
    assert [e["completion"] for e in sets["template"]] == [e["completion"] for e in sets["heldout"]]
    assert all(e["prompt"].startswith("Review: ") for e in sets["template"])
    assert not any(e["prompt"].startswith("Review: ") for e in sets["heldout"])
    assert sets["natural"] == natural_examples(task)


def test_run_one_trains_the_recipe_at_the_seed_and_scores_that_adapter(rr, tmp_path):
    model, tok = tiny_bpe_llama(tmp_path / "tok", seed=0)
    task = get_task("sentiment")
    sets = rr.eval_sets(task, 3, 6)
    base = {name: score_task(model, tok, task, ex)["samples"] for name, ex in sets.items()}
    where = tmp_path / "adapter"
    over = {"iters": 30, "examples": 64, "batch_size": 8, "lr": 0.02}
    row = rr.run_one(model, tok, None, task, 3, 6, where, **over)
    assert (row["task"], row["seed"], row["steps"], row["examples"]) == ("sentiment", 3, 30, 64)
    assert row["train_prompts"] == "varied" and row["phrasings"] == rr.phrasings_fingerprint(task)
    assert math.isfinite(row["train_loss"])
    assert row["n"] == {"template": 6, "heldout": 6, "natural": len(natural_examples(task))}
    with adapter_method("x", where).use(model, task):  # the saved adapter gives the same scores
        for name, ex in sets.items():
            got = score_task(model, tok, task, ex)
            assert row[name] == round(got["score"], 4)
            assert row["samples"][name] == got["samples"]
    # and they are the adapter's answers, not the base's
    assert all(row["samples"][name] != base[name] for name in sets)
    assert row["natural_over_template"] == rr.ratio(row["natural"], row["template"])
