"""Task registry, synthetic generators, local loaders in the real schemas, hub failure offline."""

from __future__ import annotations

import csv
import json

import pytest

from mlx_mixlora.errors import MixloraError
from mlx_mixlora.tasks import (
    BUILTIN_TASKS,
    get_task,
    hash_split,
    load_examples,
    load_rows,
    load_task_yaml,
    resolve_task,
    task_from_dict,
)
from mlx_mixlora.tasks import registry as registry_mod
from mlx_mixlora.tasks.sources import synthetic_rows

# Rows as the hub datasets really spell them (field names, label encodings).
REAL_ROWS = {
    "classification": [
        {"text": "Wall St. Bears Claw Back Into the Black (Reuters)", "label": 2},
        {"text": "Phelps wins gold in the 200m butterfly", "label": 1},
        {"text": "UN envoy meets rebels in Darfur", "label": 0},
        {"text": "New chip doubles laptop battery life", "label": 3},
    ],
    "qa": [
        {
            "question": "is the sky blue",
            "passage": "The sky is blue on clear days.",
            "answer": True,
        },
        {"question": "do cats bark", "passage": "Cats meow; dogs bark.", "answer": False},
    ],
    "summarization": [
        {
            "article": "LONDON (CNN) -- The mayor opened a bridge.\nIt cost a lot.",
            "highlights": "Mayor opens bridge .\nIt cost a lot .",
            "id": "a1",
        },
        {
            "article": "A storm hit the coast on Monday.",
            "highlights": "Storm hits coast .",
            "id": "a2",
        },
    ],
    "sentiment": [
        {"sentence": "a gorgeous , witty , seductive movie . ", "label": 1, "idx": 0},
        {"sentence": "the plot is nothing but boilerplate clichés ", "label": 0, "idx": 1},
    ],
}
EXPECTED_FIRST = {
    "classification": " Business",
    "qa": " yes",
    "summarization": " Mayor opens bridge . It cost a lot .",
    "sentiment": " positive",
}


def _write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_builtin_tasks_match_the_seeds_datasets():
    names = {t.name: t for t in BUILTIN_TASKS}
    assert set(names) == {"classification", "qa", "summarization", "sentiment"}
    assert names["classification"].label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert names["qa"].label_names == ["yes", "no"]
    assert names["sentiment"].label_names == ["negative", "positive"]
    assert names["summarization"].metric == "rouge_l" and names["summarization"].labels is None
    assert (names["summarization"].hub.path, names["summarization"].hub.name) == (
        "cnn_dailymail",
        "3.0.0",
    )
    assert (names["sentiment"].hub.path, names["sentiment"].hub.name) == ("glue", "sst2")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("task_name", sorted(REAL_ROWS))
def test_local_split_files_in_real_schema(tmp_path, task_name, fmt):
    task = get_task(task_name)
    rows = REAL_ROWS[task_name]
    _write(tmp_path / f"test.{fmt}", rows, fmt)
    _write(tmp_path / f"train.{fmt}", rows[::-1], fmt)
    ex = load_examples(task, str(tmp_path), "test")
    assert len(ex) == len(rows)
    assert ex[0]["completion"] == EXPECTED_FIRST[task_name]
    for field in task.fields:
        assert " ".join(str(rows[0][field]).split()) in ex[0]["prompt"]
    # train comes from its own file, in its own order
    assert load_examples(task, str(tmp_path), "train")[-1] == ex[0]


def test_directory_with_one_subdir_per_task(tmp_path):
    (tmp_path / "sentiment").mkdir()
    _write(tmp_path / "sentiment" / "validation.jsonl", REAL_ROWS["sentiment"], "jsonl")
    _write(tmp_path / "qa.jsonl", REAL_ROWS["qa"] * 20, "jsonl")
    assert [e["completion"] for e in load_examples("sentiment", str(tmp_path), "validation")] == [
        " positive",
        " negative",
    ]
    # a single file is split by hash: rows of one split never appear in another
    train = load_rows(get_task("qa"), str(tmp_path), "train")
    assert all(hash_split(get_task("qa"), r) == "train" for r in train)


def test_missing_split_file_is_an_error_not_a_resplit(tmp_path):
    _write(tmp_path / "train.jsonl", REAL_ROWS["sentiment"], "jsonl")
    with pytest.raises(MixloraError, match="no 'test' file"):
        load_rows(get_task("sentiment"), str(tmp_path), "test")


def test_bad_local_files_fail_with_one_clear_line(tmp_path):
    task = get_task("sentiment")
    _write(tmp_path / "test.jsonl", [{"text": "wrong schema", "label": 1}], "jsonl")
    with pytest.raises(MixloraError, match=r"lack field\(s\) \['sentence'\]"):
        load_rows(task, str(tmp_path), "test")
    _write(tmp_path / "test.jsonl", [{"sentence": "x", "label": 7}], "jsonl")
    with pytest.raises(MixloraError, match="label 7 is not in its label map"):
        load_rows(task, str(tmp_path), "test")
    (tmp_path / "test.jsonl").write_text('{"sentence": "x", "label"\n')
    with pytest.raises(MixloraError, match="not valid JSON"):
        load_rows(task, str(tmp_path), "test")
    (tmp_path / "test.jsonl").unlink()
    (tmp_path / "test.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(MixloraError, match="parquet"):
        load_rows(task, str(tmp_path), "test")
    with pytest.raises(MixloraError, match="data path not found"):
        load_rows(task, str(tmp_path / "nope"), "test")
    with pytest.raises(MixloraError, match="unknown split"):
        load_rows(task, "synthetic", "dev")


def test_hub_dataset_offline_fails_with_one_line(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds", raising=False)
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", tmp_path / "mod", raising=False)
    with pytest.raises(MixloraError) as info:
        load_rows(get_task("classification"), "hub", "test", n=5)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("could not load hub dataset ag_news (split test)")
    assert "--data synthetic" in msg


@pytest.mark.parametrize("task", BUILTIN_TASKS, ids=lambda t: t.name)
def test_synthetic_splits_are_deterministic_disjoint_and_balanced(task):
    a = synthetic_rows(task, "train", 400, seed=3)
    assert a == synthetic_rows(task, "train", 400, seed=3)
    assert a != synthetic_rows(task, "train", 400, seed=4)
    key = lambda r: tuple(str(r[f]) for f in task.fields)  # noqa: E731
    test = {key(r) for r in synthetic_rows(task, "test", 200, seed=3)}
    val = {key(r) for r in synthetic_rows(task, "validation", 200, seed=3)}
    train = {key(r) for r in a}
    assert not (train & test) and not (train & val) and not (val & test)
    if task.labels:
        targets = [task.target_text(r) for r in a]
        shares = [targets.count(name) / len(targets) for name in task.label_names]
        assert min(shares) > 0.6 / len(task.label_names), shares


def test_synthetic_answers_follow_from_the_content():
    from mlx_mixlora.tasks import synthetic as syn

    for r in synthetic_rows(get_task("classification"), "train", 200):
        actors = syn.TOPICS[r["label"]][0]
        assert any(r["text"].lower().startswith(a) for a in actors)
    for r in synthetic_rows(get_task("qa"), "train", 200):
        obj, color = r["question"].split()[2], r["question"].split()[3]
        sentence = next(s for s in r["passage"].split(". ") if f"The {obj} is" in s)
        assert ("not" not in sentence) == r["answer"]
        assert color in sentence
    for r in synthetic_rows(get_task("summarization"), "train", 200):
        assert r["article"].startswith(r["highlights"][:-1])
    for r in synthetic_rows(get_task("sentiment"), "train", 200):
        words = set(r["sentence"].split())
        assert bool(words & set(syn.POSITIVE)) == (r["label"] == 1)
        assert bool(words & set(syn.NEGATIVE)) == (r["label"] == 0)


def test_user_task_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))
    spec = tmp_path / "topic.yaml"
    spec.write_text(
        "name: urgency\nfields: [subject, body]\n"
        'template: "Subject: {subject}\\nBody: {body}\\nUrgent:"\n'
        "target: urgent\nlabels: {true: 'yes', false: 'no'}\n"
    )
    task = load_task_yaml(spec)
    assert resolve_task("urgency") is task and task.metric == "accuracy"
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"subject": "server down", "body": "now", "urgent": "True"}) + "\n")
    row = json.loads(data.read_text())
    assert task.example(row) == {
        "prompt": "Subject: server down\nBody: now\nUrgent:",
        "completion": " yes",
    }
    with pytest.raises(MixloraError, match="already registered"):
        load_task_yaml(spec)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "x", "fields": ["a"], "template": "{b}", "target": "y"}, "template uses a field"),
        ({"name": "x", "fields": ["a"], "template": "{a}"}, "missing key 'target'"),
        (
            {"name": "x", "fields": ["a"], "template": "{a}", "target": "y", "metric": "bleu"},
            "unknown metric",
        ),
        ({"name": "../x", "fields": ["a"], "template": "{a}", "target": "y"}, "invalid task name"),
        (
            {"name": "x", "fields": ["a"], "template": "{a}", "target": "y", "colour": 1},
            "unknown keys",
        ),
        ({"name": "x", "fields": [], "template": "{a}", "target": "y"}, "non-empty list"),
    ],
)
def test_bad_task_specs(spec, match):
    with pytest.raises(MixloraError, match=match):
        task_from_dict(spec)


def test_unknown_task_and_bad_yaml(tmp_path):
    with pytest.raises(MixloraError, match="unknown task 'poetry'"):
        get_task("poetry")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(MixloraError, match="not valid yaml"):
        load_task_yaml(bad)
