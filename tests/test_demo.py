"""`mixlora demo` end to end on a tiny nano base: files, matrix, reproducibility, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_mixlora.cli import main
from mlx_mixlora.demo import DemoConfig, run_demo
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.nano import NanoRecipe, build_nano_base
from mlx_mixlora.train.recipe import builtin_recipe, builtin_recipe_paths, read_recipe

ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"
TINY = NanoRecipe(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=512,
    seq_len=32,
    batch_size=4,
    steps=4,
    warmup_steps=1,
    corpus_rows_per_task=100,
)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return build_nano_base(tmp_path_factory.mktemp("base") / "nano", TINY, progress=False)


def _cfg(base, out, **kw):
    opts = dict(
        out=out,
        model=str(base),
        tasks=["sentiment", "qa"],
        eval_examples=6,
        train_examples=16,
        iters=2,
        routing=False,
        learned=False,  # one test below runs them: they add a minute to every demo here
        calib_examples=2,
        progress=False,
    )
    opts.update(kw)
    return DemoConfig(**opts)


def test_demo_writes_report_matrix_and_plots_reproducibly(tiny_base, tmp_path):
    res = run_demo(_cfg(tiny_base, tmp_path / "a", routing=True, learned=True))
    out = tmp_path / "a"
    assert {p.name for p in out.iterdir()} >= {
        "report.md",
        "results.json",
        "heatmap.png",
        "retention.png",
        "adapters",
        "merged",
    }
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in saved["methods"]]
    assert names[:3] == ["base", "adapter:sentiment", "adapter:qa"]
    assert any(n.startswith("merge:") for n in names)
    for m in names:
        assert set(saved["scores"][m]) == {"sentiment", "qa"}
        for cell in saved["scores"][m].values():
            assert 0.0 <= cell["score"] <= 1.0 and cell["n"] == 6
    assert set(saved["retention"]) == {n for n in names if n.startswith(("merge:", "route:"))}
    # adapters recorded with their final location, loadable from there
    ad = next(m for m in saved["methods"] if m["name"] == "adapter:qa")
    assert Path(ad["adapter"]).is_dir() and Path(ad["adapter"]).parent.parent == out
    report = (out / "report.md").read_text()
    assert "| adapter:qa |" in report and "![task × method heatmap](heatmap.png)" in report
    assert saved["train_options"]["iters"] == 2 and saved["train"]["qa"]["examples"] == 16

    routers = [m["name"] for m in saved["methods"] if m["kind"] == "route"]
    assert routers == [
        "route:gate-top1",
        "route:centroid-top1",
        "route:arrow-top1",
        "route:uniform-merge",
        "route:oracle",
    ]
    for name in routers:
        route = saved["scores"][name]
        if name == "route:uniform-merge":  # every adapter at once: no routing accuracy
            assert all("routing_accuracy" not in r for r in route.values())
        else:
            assert {r["routing_accuracy"] for r in route.values()} <= {x / 6 for x in range(7)}
        assert name in saved["retention"]
    assert all(r["routing_accuracy"] == 1.0 for r in saved["scores"]["route:oracle"].values())
    for t in ("sentiment", "qa"):  # the oracle runs each prompt fused on its own adapter
        own = saved["scores"][f"adapter:{t}"][t]["score"]
        assert saved["scores"]["route:oracle"][t]["score"] == pytest.approx(own, abs=1e-9)
    assert "## Routing" in report and "(best static merge)" in report
    learned = {m["name"]: m["learned"] for m in saved["methods"] if "learned" in m}
    assert set(learned) >= {"merge:adamerging", "merge:adamerging-distill", "merge:ties-search"}
    for info in learned.values():  # validation prompts, two per task
        assert info["calibration_examples"] == {"qa": 2, "sentiment": 2}
    assert "### Learned merges" in report and "| merge:ties-search | 4 (2 tasks) |" in report

    # reproducible (the learned rows' determinism is tests/test_merge_learned.py's)
    again = run_demo(_cfg(tiny_base, tmp_path / "b", routing=True))

    def strip(r):
        return {
            m: {t: {k: v for k, v in c.items() if k != "seconds"} for t, c in row.items()}
            for m, row in r["scores"].items()
        }

    assert strip(again) == {m: row for m, row in strip(res).items() if m in again["scores"]}


def test_demo_failure_leaves_no_output(tiny_base, tmp_path):
    with pytest.raises(MixloraError, match="data path not found"):
        run_demo(_cfg(tiny_base, tmp_path / "x", data=str(tmp_path / "missing")))
    assert not (tmp_path / "x").exists()
    (tmp_path / "y").mkdir()
    with pytest.raises(MixloraError, match="already exists"):
        run_demo(_cfg(tiny_base, tmp_path / "y"))


def test_demo_log_names_final_paths_and_records_the_machine(tiny_base, tmp_path, capsys):
    out = tmp_path / "m"
    run_demo(_cfg(tiny_base, out, tasks=["sentiment"], merges=False, plots=False, progress=True))
    err = capsys.readouterr().err
    assert f"adapter written to {out / 'adapters' / 'sentiment'} " in err
    assert ".tmp-" not in err  # the temp dir is renamed at the end: never name it
    machine = json.loads((out / "results.json").read_text())["machine"]
    assert machine["cpus"] >= 1 and machine["chip"] and machine["blas"]
    assert machine["versions"]["mlx"]
    report = (out / "report.md").read_text()
    assert f"Machine: {machine['chip']} ({machine['cpus']} CPUs" in report


def test_demo_cli_prints_the_table(tiny_base, tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "demo",
            "--model",
            str(tiny_base),
            "--out",
            str(tmp_path / "c"),
            "--tasks",
            "sentiment",
            "--eval-examples",
            "4",
            "--train-examples",
            "8",
            "--iters",
            "1",
            "--no-merge",
            "--no-route",
            "--no-plots",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "| adapter:sentiment |" in r.output and (tmp_path / "c" / "report.md").is_file()
    assert not (tmp_path / "c" / "heatmap.png").exists()
    bad = CliRunner().invoke(
        main, ["demo", "--model", "not-a-dir", "--out", str(tmp_path / "d"), "-q"]
    )
    assert bad.exit_code == 1 and "error: --model 'not-a-dir'" in bad.output


NANO_TRAIN = {
    "rank": 8,
    "alpha": 16,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "lr": 1.0e-3,
    "warmup": 10,
    "pack": False,
    "max_seq_len": 256,
    "seed": 0,
}
# (steps, batch size, examples) per task, chosen on held-out phrasings (see adapters/*.nano.yaml)
NANO_STEPS = {
    "classification": (360, 32, 11520),
    "qa": (400, 32, 3840),
    "summarization": (480, 16, 3840),
    "sentiment": (360, 32, 11520),
}
HUB_TRAIN = {
    "rank": 8,
    "alpha": 16,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "epochs": 1,
    "batch_size": 4,
    "lr": 2.0e-4,
    "max_seq_len": 1024,
    "seed": 0,
}


@pytest.mark.parametrize("task", ["classification", "qa", "summarization", "sentiment"])
def test_the_demo_trains_from_the_shipped_recipes(task):
    """adapters/*.yaml is the one recipe source: the repo files are what the package ships."""
    shipped = {p.name: p for p in builtin_recipe_paths()}
    for kind in ("nano", "tinyllama"):
        name = f"{task}.{kind}.yaml"
        assert shipped[name].read_bytes() == (ADAPTERS / name).read_bytes()
    nano = builtin_recipe(task, "nano")
    assert (nano.task, nano.model, nano.source) == (task, "nano", "synthetic")
    iters, batch, examples = NANO_STEPS[task]
    assert nano.train == {**NANO_TRAIN, "iters": iters, "batch_size": batch}
    assert nano.examples == examples
    assert nano.prompts == "varied"
    hub = read_recipe(ADAPTERS / f"{task}.tinyllama.yaml")
    assert hub.source == "hub" and hub.model.startswith("TinyLlama/")
    assert hub.train == HUB_TRAIN and hub.examples == 200
    cfg = hub.train_config()
    assert (cfg.rank, cfg.epochs, cfg.targets) == (8, 1, ["q_proj", "k_proj", "v_proj", "o_proj"])


def test_a_task_without_a_recipe_trains_with_the_classification_options():
    r = builtin_recipe("my_task", "nano")
    assert (r.name, r.task) == ("my_task", "my_task")
    assert r.train == builtin_recipe("classification", "nano").train


def test_a_task_added_as_one_yaml_file_runs_through_the_demo(tiny_base, tmp_path):
    """Adding a task is one file: a yaml task (here on the AG News generator, in a template of
    its own) trains, merges and scores beside a built-in one, with the classification recipe."""
    spec = tmp_path / "headline_topic.yaml"
    spec.write_text(
        "name: headline_topic\n"
        "fields: [text]\n"
        'template: "Headline: {text}\\nSection (World, Sports, Business or Sci/Tech):"\n'
        "target: label\n"
        "labels: {0: World, 1: Sports, 2: Business, 3: Sci/Tech}\n"
        "synthetic: ag_news\n"
    )
    res = run_demo(_cfg(tiny_base, tmp_path / "out", tasks=["sentiment", str(spec)]))
    assert res["tasks"] == ["sentiment", "headline_topic"]
    assert res["primary_metric"]["headline_topic"] == "accuracy_gen"
    scores = res["scores"]["adapter:headline_topic"]["headline_topic"]
    assert scores["n"] == 6 and 0.0 <= scores["score"] <= 1.0
    assert (tmp_path / "out" / "adapters" / "headline_topic" / "adapters.safetensors").is_file()
    assert any(m["name"].startswith("merge:") for m in res["methods"])
