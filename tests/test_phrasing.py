"""Phrasings and the natural-request set: disjoint splits, valid data, evaluation only."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from mlx_mixlora.errors import MixloraError
from mlx_mixlora.tasks import BUILTIN_TASKS, load_examples, task_from_dict
from mlx_mixlora.tasks import natural as N
from mlx_mixlora.tasks.phrasing import TEMPLATE_SHARE, TYPED_SHARE, row_phrasings, typed


def _pattern(text: str) -> re.Pattern:
    """A regex that matches any prompt made from `text` (each field: any text)."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(text):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append("(.+)")
    return re.compile("".join(parts), re.S)


def _letters(text: str) -> int:
    fixed = "".join(lit for lit, _, _, _ in string.Formatter().parse(text))
    return sum(c.isalpha() for c in fixed)


@pytest.mark.parametrize("task", BUILTIN_TASKS, ids=lambda t: t.name)
def test_builtin_phrasings_are_many_and_the_split_is_disjoint(task):
    assert len(task.phrasings) >= 20 and len(task.heldout_phrasings) >= 8
    assert len(set(task.phrasings)) == len(task.phrasings)
    assert len(set(task.heldout_phrasings)) == len(task.heldout_phrasings)
    assert not set(task.phrasings) & set(task.heldout_phrasings)
    assert task.template not in {*task.phrasings, *task.heldout_phrasings}
    # instruction before the text and after it both occur among the train phrasings
    starts = [p.startswith("{") for p in task.phrasings]
    assert any(starts) and not all(starts)


@pytest.mark.parametrize("task", BUILTIN_TASKS, ids=lambda t: t.name)
def test_natural_set_has_forty_valid_requests_per_task_in_no_known_wording(task):
    ex = N.natural_examples(task)
    assert len(ex) >= 40
    assert len({e["prompt"] for e in ex}) == len(ex)
    if task.is_label_task:  # answers are labels, and every label is asked for
        counts = Counter(e["completion"].strip() for e in ex)
        assert set(counts) == set(task.label_names)
        assert min(counts.values()) >= len(ex) // (2 * len(task.label_names))
    # A wording whose fixed text is a real instruction (8+ letters) must not produce any
    # natural request; bare "{passage}\n{question}?" is how anyone would paste a question.
    wordings = (task.template, *task.phrasings, *task.heldout_phrasings)
    known = [_pattern(p) for p in wordings if _letters(p) >= 8]
    assert len(known) >= len(wordings) - 3
    for e in ex:
        assert not any(k.fullmatch(e["prompt"]) for k in known), e["prompt"]


def test_styles_draw_from_their_own_phrasings_deterministically():
    task = BUILTIN_TASKS[0]
    varied = row_phrasings(task, 2000, "varied", seed=3)
    assert varied == row_phrasings(task, 2000, "varied", seed=3)
    assert varied != row_phrasings(task, 2000, "varied", seed=4)
    share = varied.count(None) / len(varied)
    assert abs(share - TEMPLATE_SHARE) < 0.03
    assert {p for p in varied if p is not None} == set(task.phrasings)
    held = row_phrasings(task, 500, "heldout")
    assert set(held) == set(task.heldout_phrasings)
    assert row_phrasings(task, 5, "template") == [None] * 5
    with pytest.raises(MixloraError, match="unknown prompt style 'chatty'"):
        row_phrasings(task, 5, "chatty")


def test_load_examples_keeps_rows_and_answers_across_styles():
    a = load_examples("sentiment", "synthetic", "test", n=30, prompts="template")
    b = load_examples("sentiment", "synthetic", "test", n=30, prompts="heldout")
    assert [e["completion"] for e in a] == [e["completion"] for e in b]
    for x, y in zip(a, b, strict=True):  # the same review, asked another way
        review = x["prompt"].split("Review: ", 1)[1].split("\n", 1)[0]
        assert review in y["prompt"] and x["prompt"] != y["prompt"]


def _bare(prompt: str) -> str:
    """A prompt with what typing may change taken out: case, full stops, end punctuation."""
    return re.sub(r"\.(?=[ \t]*(\n|$))", "", prompt.lower()).rstrip().rstrip(".?:!").rstrip()


@pytest.mark.parametrize("task", BUILTIN_TASKS, ids=lambda t: t.name)
def test_varied_prompts_are_partly_typed_and_keep_their_answers(task):
    rows = load_examples(task, "synthetic", "train", n=800, prompts="template")
    varied = load_examples(task, "synthetic", "train", n=800, prompts="varied")
    assert varied == load_examples(task, "synthetic", "train", n=800, prompts="varied")
    phrasings = row_phrasings(task, 800, "varied", seed=0)
    tidy = [task.example(r, p)["prompt"] for r, p in zip(_rows(task, 800), phrasings, strict=True)]
    assert [e["completion"] for e in varied] == [e["completion"] for e in rows]
    n_typed = 0
    for e, clean, p in zip(varied, tidy, phrasings, strict=True):
        if p is None:  # template rows stay exactly the template
            assert e["prompt"] == clean
            continue
        assert _bare(e["prompt"]) == _bare(clean)  # only case and punctuation changed
        n_typed += e["prompt"] != clean
    n_phrased = sum(p is not None for p in phrasings)
    # each typed row changes with probability 1 - 1/8 (three independent halves)
    assert abs(n_typed / n_phrased - TYPED_SHARE * 7 / 8) < 0.06
    # evaluation prompts are never typed
    held = load_examples(task, "synthetic", "test", n=50, prompts="heldout")
    wordings = row_phrasings(task, 50, "heldout")
    rows_t = _rows(task, 50, split="test")
    assert [e["prompt"] for e in held] == [
        task.example(r, p)["prompt"] for r, p in zip(rows_t, wordings, strict=True)
    ]


def _rows(task, n, split="train"):
    from mlx_mixlora.tasks.sources import load_rows

    return load_rows(task, "synthetic", split, n=n, seed=0)


def test_typed_changes_only_case_and_punctuation():
    import random

    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        out = typed("The cup is red. Is the Cup pink? Answer yes or no.\nAnswer:", rng)
        assert _bare(out) == "the cup is red. is the cup pink? answer yes or no\nanswer"
        seen.add(out)
    assert len(seen) == 8  # lower case x full stops x end punctuation, all reached


def _spec(**extra):
    return {"name": "topic", "fields": ["text"], "template": "Text: {text}\nTopic:"} | {
        "target": "label",
        "labels": {0: "a", 1: "b"},
        **extra,
    }


def test_user_task_yaml_phrasings_are_checked():
    t = task_from_dict(_spec(phrasings=["Topic of {text}?"], heldout_phrasings=["{text} ->"]))
    assert t.phrasings == ("Topic of {text}?",) and t.heldout_phrasings == ("{text} ->",)
    bad = [
        (_spec(phrasings=["no field here"]), "must use every field"),
        (_spec(phrasings=["{other}"]), "uses a field that is not in fields"),
        (_spec(phrasings=["{text}?"], heldout_phrasings=["{text}?"]), "held-out phrasing is also"),
        (_spec(phrasings="{text}"), "must be a list of non-empty prompt texts"),
    ]
    for spec, msg in bad:
        with pytest.raises(MixloraError, match=msg):
            task_from_dict(spec)
    with pytest.raises(MixloraError, match="has no held-out phrasings"):
        load_examples(task_from_dict(_spec()), "synthetic", "test", n=1, prompts="heldout")


def test_natural_file_errors_are_one_line(tmp_path):
    f = tmp_path / "n.jsonl"
    f.write_text('{"task": "qa", "prompt": "x"}\n')
    with pytest.raises(MixloraError, match="row 1: needs non-empty task, prompt, answer"):
        N.read_natural(f)
    f.write_text('{"task": "qa", "prompt": "is it?", "answer": "maybe"}\n')
    qa = next(t for t in BUILTIN_TASKS if t.name == "qa")
    with pytest.raises(MixloraError, match="answer 'maybe', not one of"):
        N.natural_examples(qa, f)


def test_recipes_may_not_train_on_held_out_phrasings():
    from mlx_mixlora.train.recipe import recipe_from_dict

    assert recipe_from_dict({"name": "a", "task": "qa"}).prompts == "varied"
    with pytest.raises(MixloraError, match="held-out phrasings are for evaluation only"):
        recipe_from_dict({"name": "a", "task": "qa", "prompts": "heldout"})
