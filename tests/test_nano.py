"""Nano base: tokenizer files, model dir layout, cache keying and atomic build."""

from __future__ import annotations

import json
import random
import re
import string

import pytest

from mlx_mixlora.errors import MixloraError
from mlx_mixlora.nano import (
    NanoRecipe,
    build_nano_base,
    cache_root,
    cached_path,
    ensure_nano_base,
    is_complete,
)
from mlx_mixlora.nano.corpus import pretraining_docs
from mlx_mixlora.tasks import BUILTIN_TASKS
from mlx_mixlora.tasks.sources import synthetic_rows

TINY = NanoRecipe(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=512,
    seq_len=32,
    batch_size=4,
    steps=6,
    warmup_steps=2,
    corpus_rows_per_task=150,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXLORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MIXLORA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "mlx-mixlora"
    monkeypatch.setenv("MIXLORA_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    a, b = cached_path(TINY), cached_path(NanoRecipe(**{**TINY.to_dict(), "steps": 7}))
    assert a.name.startswith("nano-") and a != b  # any recipe change is a new cache entry


def _wording(text: str, labels: str) -> re.Pattern:
    """Matches a document made of `text` (fields: any text) followed by one label."""
    parts = [
        re.escape(lit) + ("(.+)" if field is not None else "")
        for lit, field, _, _ in string.Formatter().parse(text)
    ]
    return re.compile("".join(parts) + f" ({labels})", re.S)


def test_corpus_answers_carry_no_information():
    """Prompt-formatted docs have answers independent of content: agreement at chance."""
    from mlx_mixlora.nano.corpus import shuffled_answer_doc

    docs = pretraining_docs(400, seed=0, format_share=0.25)
    assert len(docs) == 1600
    for task in BUILTIN_TASKS:
        labels = "|".join(re.escape(x) for x in task.label_names) or "[^\n]+"
        wordings = [_wording(w, labels) for w in (task.template, *task.phrasings)]
        share = sum(any(w.fullmatch(d) for w in wordings) for d in docs) / 400
        if task.is_label_task:
            assert 0.15 < share < 0.35, (task.name, share)
            template_share = sum(wordings[0].fullmatch(d) is not None for d in docs) / 400
            assert 0.02 < template_share < 0.12, (task.name, template_share)
        else:  # no "Summary: <random headline>" docs: they would teach not to copy
            assert share == 0.0
        held_out = [_wording(w, labels) for w in task.heldout_phrasings]
        assert not any(w.fullmatch(d) for w in held_out for d in docs)  # evaluation only
    assert not any(d.startswith("News:") for d in pretraining_docs(100, 0, format_share=0.0))
    for task in [t for t in BUILTIN_TASKS if t.is_label_task]:
        rows = synthetic_rows(task, "train", 600, seed=1)
        rng = random.Random(0)
        hits = sum(
            shuffled_answer_doc(task, r, rng).endswith(" " + task.target_text(r)) for r in rows
        )
        chance = 1 / len(task.label_names)
        assert abs(hits / len(rows) - chance) < 0.08, (task.name, hits / len(rows))


def test_build_loads_like_a_converted_model(cache):
    import mlx.core as mx
    from transformers import AutoTokenizer

    from mlx_mixlora.model import base_identity, load

    path = ensure_nano_base(TINY, progress=False)
    assert path == cached_path(TINY)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (32, 2, 512)
    source = json.loads((path / "mixlora_source.json").read_text())
    assert source["source"] == "nano-synthetic" and source["recipe"] == TINY.to_dict()
    assert source["stats"]["final_loss"] < source["stats"]["first_loss"]
    assert (path / "README.md").read_text().startswith("# nano base")

    model, tok = load(path)
    ids = tok.encode("Review: the plot was dull")
    assert ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert tok.decode(ids[1:]).strip() == "Review: the plot was dull"  # prefix space
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), 512) and bool(mx.all(mx.isfinite(logits)))
    hf = AutoTokenizer.from_pretrained(str(path))
    assert hf("Review: the plot was dull")["input_ids"] == ids
    assert base_identity(path)["name_or_path"] == "nano-synthetic"

    # second call: cache hit, no rebuild (mtime unchanged)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_nano_base(TINY, progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_build_is_reproducible_and_atomic(tmp_path, monkeypatch):
    import numpy as np
    from safetensors.numpy import load_file

    a = build_nano_base(tmp_path / "a", TINY, progress=False)
    b = build_nano_base(tmp_path / "b", TINY, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(MixloraError, match="already exists"):
        build_nano_base(tmp_path / "a", TINY, progress=False)

    from mlx_mixlora.nano import build as build_mod

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(build_mod, "pretrain", boom)
    with pytest.raises(RuntimeError):
        build_nano_base(tmp_path / "c", TINY, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.slow  # full-size corpus, tokenizer and model for one step (~10 s)
def test_base_cli_build_and_path(tmp_path, cache):
    from click.testing import CliRunner

    from mlx_mixlora.cli import main

    r = CliRunner().invoke(main, ["base", "path"])
    assert r.exit_code == 0 and str(cache) in r.output and "not built yet" in r.output
    out = tmp_path / "nano"
    r = CliRunner().invoke(main, ["base", "build", "-o", str(out), "--steps", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert (
        is_complete(out)
        and json.loads((out / "mixlora_source.json").read_text())["recipe"]["steps"] == 1
    )
    r = CliRunner().invoke(main, ["base", "build", "-o", str(out), "--steps", "1", "-q"])
    assert r.exit_code == 1 and "error: output path" in r.output and "already exists" in r.output
    r = CliRunner().invoke(main, ["base", "build", "--steps", "0"])
    assert r.exit_code == 1 and "--steps must be >= 1" in r.output


class _Oracle:
    """A fake model whose greedy next token is chosen by `rule(ids, t)` (numpy, no weights)."""

    def __init__(self, rule, vocab: int = 512):
        self.rule, self.vocab = rule, vocab

    def __call__(self, x):
        import mlx.core as mx
        import numpy as np

        ids = np.array(x)[0].tolist()
        logits = np.zeros((1, len(ids), self.vocab), dtype=np.float32)
        for t in range(len(ids)):
            logits[0, t, self.rule(ids, t)] = 1.0
        return mx.array(logits)


def _induction(ids: list[int], t: int) -> int:
    """What followed the latest earlier occurrence of the current token (else token 0)."""
    for j in range(t - 1, -1, -1):
        if ids[j] == ids[t]:
            return ids[j + 1]
    return 0


def test_copy_probe_separates_copying_from_not_copying():
    """The probe scores an exact induction head near 1 and a non-copying model at 0."""
    from transformers import PreTrainedTokenizerFast

    from mlx_mixlora.nano.corpus import tokenizer_texts
    from mlx_mixlora.nano.probe import copy_probe
    from mlx_mixlora.nano.tokenizer import BOS, EOS, PAD, UNK, train_bpe

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(tokenizer_texts(pretraining_docs(150, seed=0)), 512),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
    )
    copier = copy_probe(_Oracle(_induction), tok, n=30)
    assert copier["repeat"] > 0.6  # a token repeated inside a span (e.g. "the") can fool it

    def subject_last_name(ids: list[int], t: int) -> int:  # reads the lead's second word
        last = tok.decode(ids, skip_special_tokens=True).split()[1]
        return tok.encode(" " + last, add_special_tokens=False)[0]

    namer = copy_probe(_Oracle(subject_last_name), tok, n=30)
    assert namer["remention"] == 1.0 and namer["repeat"] < 0.2
    blind = copy_probe(_Oracle(lambda ids, t: 0), tok, n=30)
    assert blind["remention"] == 0.0 and blind["repeat"] == 0.0
    assert blind["remention_chance"] == 0.05 and 0 < blind["repeat_chance"] < 0.01


def test_the_corpus_is_pinned_so_a_change_cannot_leave_cached_bases_stale():
    """The cache key holds the recipe's fields only; the corpus (generators, templates,
    train phrasings) is pinned here. A change to it must bump BUILD_VERSION, which moves
    the key, and update CORPUS_FINGERPRINT."""
    from mlx_mixlora.nano.corpus import corpus_fingerprint
    from mlx_mixlora.nano.recipe import BUILD_VERSION, CORPUS_FINGERPRINT, NanoRecipe

    r = NanoRecipe()
    got = corpus_fingerprint(r.corpus_rows_per_task, r.seed, r.format_share, r.repeat_share)
    assert got == CORPUS_FINGERPRINT, (
        f"the nano corpus changed (fingerprint {got}): bump BUILD_VERSION (now {BUILD_VERSION}) "
        "in mlx_mixlora/nano/recipe.py and set CORPUS_FINGERPRINT to the new value"
    )
