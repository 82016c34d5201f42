"""Trainer: forward parity, packing, sparse-head loss, learning, resume, data errors."""

from __future__ import annotations

# isort: off
import mlx_mixlora  # noqa: F401  (BLAS preload must come before mlx.core)

# isort: on
import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers_train import CharTokenizer, tiny_model

from mlx_mixlora.adapter_format import load_adapter
from mlx_mixlora.errors import MixloraError
from mlx_mixlora.train import TrainConfig, load_recipe, train_adapter
from mlx_mixlora.train.batching import epoch_rows, make_batch, pack_rows
from mlx_mixlora.train.data import Tokenized, fit_length, load_examples, prepare, read_jsonl
from mlx_mixlora.train.forward import hidden_states, lm_head
from mlx_mixlora.train.loss import target_loss
from mlx_mixlora.train.trainer import _arrays

TOK = CharTokenizer()
LETTERS = "abcdefghijkl"
LABELS = dict(
    zip(
        LETTERS,
        ["no", "yes", "yes", "no", "yes", "no", "no", "yes", "no", "yes", "yes", "no"],
        strict=True,
    )
)
TASK = [{"prompt": f"is {c} ok?", "completion": " " + LABELS[c]} for c in LETTERS]


def _mixed_examples(n=20, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = "".join(rng.choice(list("abcdefgh "), size=int(rng.integers(3, 30))))
        out.append(
            {
                "prompt": p,
                "completion": "".join(rng.choice(list("xyz"), size=int(rng.integers(1, 4)))),
            }
        )
    return out


def _greedy_accuracy(model, examples):
    ok = 0
    for e in examples:
        ids = TOK.encode(e["prompt"])
        tgt = TOK.encode(e["completion"], False) + [TOK.eos_token_id]
        logits = lm_head(model, hidden_states(model, mx.array([(ids + tgt)[:-1]])))[0]
        ok += mx.argmax(logits[len(ids) - 1 :], axis=-1).tolist() == tgt
    return ok / len(examples)


# ---------------------------------------------------------------- forward


def test_forward_matches_mlx_lm():
    model = tiny_model()
    x = mx.array(np.random.default_rng(0).integers(0, 64, (2, 19)).astype(np.int32))
    ref = model(x)
    assert mx.abs(lm_head(model, hidden_states(model, x)) - ref).max().item() <= 1e-5
    pos = mx.array(np.tile(np.arange(19), (2, 1)).astype(np.int32))
    seg = mx.zeros((2, 19), mx.int32)
    assert mx.abs(lm_head(model, hidden_states(model, x, pos, seg)) - ref).max().item() <= 1e-5


def test_packed_row_equals_separate_examples():
    model = tiny_model()
    rng = np.random.default_rng(1)
    a, b = rng.integers(3, 64, 7).tolist(), rng.integers(3, 64, 5).tolist()
    row = mx.array([a + b])
    pos = mx.array([list(range(7)) + list(range(5))])
    seg = mx.array([[0] * 7 + [1] * 5])
    packed = lm_head(model, hidden_states(model, row, pos, seg))[0]
    sep_a = model(mx.array([a]))[0]
    sep_b = model(mx.array([b]))[0]
    assert mx.abs(packed[:7] - sep_a).max().item() <= 1e-5
    assert mx.abs(packed[7:] - sep_b).max().item() <= 1e-5
    leaky = model(row)[0]  # plain causal attention sees example a from b
    assert mx.abs(leaky[7:] - sep_b).max().item() > 1e-3


def test_packed_and_unpacked_batches_give_the_same_loss():
    model = tiny_model()
    items, _ = prepare(_mixed_examples(), TOK, 64)
    packed = make_batch(items, pack_rows(items, np.arange(len(items)), 64), 64, packed=True)
    assert packed.segments is not None and packed.tokens.shape[0] < len(items)
    unpacked = make_batch(items, [[i] for i in range(len(items))], 64, packed=False)
    lp, np_ = target_loss(model, *_arrays(packed))
    lu, nu = target_loss(model, *_arrays(unpacked))
    assert np_.item() == nu.item() == sum(t.n_targets for t in items)
    assert abs(lp.item() - lu.item()) <= 1e-5
    # dropping the block-diagonal mask must change the loss, or this test proves nothing
    arrays = list(_arrays(packed))
    arrays[4] = arrays[5] = None
    assert abs(target_loss(model, *arrays)[0].item() - lu.item()) > 1e-4


def test_sparse_head_loss_equals_full_masked_cross_entropy():
    model = tiny_model()
    items, _ = prepare(_mixed_examples(6), TOK, 64)
    b = make_batch(items, [[i] for i in range(len(items))], 64, packed=False)
    ours, _ = target_loss(model, *_arrays(b))
    logits = model(mx.array(b.tokens)).reshape(-1, 64)
    idx = b.target_idx[: b.n_targets]
    ce = nn.losses.cross_entropy(logits[mx.array(idx)], mx.array(b.labels[: b.n_targets]))
    assert abs(ours.item() - ce.mean().item()) <= 1e-5


def test_grad_checkpoint_gives_the_same_loss_and_grads():
    from mlx_mixlora.adapter_format import AdapterConfig
    from mlx_mixlora.lora import attach_lora, lora_modules

    model = tiny_model()
    attach_lora(model, AdapterConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"], layers=[0, 1]))
    for m in lora_modules(model).values():
        m.lora_b = mx.ones(m.lora_b.shape) * 0.05
    items, _ = prepare(_mixed_examples(8), TOK, 64)
    arrays = _arrays(make_batch(items, pack_rows(items, np.arange(8), 64), 64, packed=True))
    (l0, _), g0 = nn.value_and_grad(model, target_loss)(model, *arrays)
    (l1, _), g1 = nn.value_and_grad(model, lambda *a: target_loss(*a, grad_checkpoint=True))(
        model, *arrays
    )
    assert abs(l0.item() - l1.item()) <= 1e-6
    from mlx.utils import tree_flatten

    for (k, a), (_, b) in zip(tree_flatten(g0), tree_flatten(g1), strict=True):
        assert mx.allclose(a, b, atol=1e-6).item(), k


# ---------------------------------------------------------------- batching


def test_packing_covers_every_example_once_within_capacity():
    items, _ = prepare(_mixed_examples(50), TOK, 40)
    for pack in (True, False):
        plan = epoch_rows(items, 4, 40, pack, seed=3, epoch=0)
        seen = sorted(i for batch in plan for row in batch for i in row)
        assert seen == list(range(len(items)))
        for batch in plan:
            assert len(batch) <= 4
            for row in batch:
                assert sum(len(items[i].ids) - 1 for i in row) <= 40
    assert epoch_rows(items, 4, 40, True, 3, 0) == epoch_rows(items, 4, 40, True, 3, 0)
    assert epoch_rows(items, 4, 40, True, 3, 0) != epoch_rows(items, 4, 40, True, 3, 1)


# ---------------------------------------------------------------- data


def test_tokenize_masks_prompt_and_appends_eos():
    items, stats = prepare([{"prompt": "ab", "completion": "c"}, {"text": "hi"}], TOK, 64)
    assert items[0].ids == [1, 3, 4, 5, 2] and items[0].target_start == 3
    assert items[1].target_start == 1 and items[1].ids[-1] == 2
    nomask, _ = prepare([{"prompt": "ab", "completion": "c"}], TOK, 64, mask_prompt=False)
    assert nomask[0].target_start == 1
    assert stats.targets == 2 + 3


def test_long_policy_truncate_keeps_answer_and_skip_drops():
    t = Tokenized(ids=[1] + list(range(10, 30)) + [7, 2], target_start=21)
    cut = fit_length(t, 10, "truncate")
    assert len(cut.ids) == 10 and cut.ids[0] == 1 and cut.ids[-2:] == [7, 2]
    assert cut.ids[cut.target_start :] == [7, 2]
    assert fit_length(t, 10, "skip") is None
    text = Tokenized(ids=list(range(20)), target_start=1)
    assert fit_length(text, 8, "truncate").ids == list(range(8))
    exs = [{"prompt": "a" * 50, "completion": "b"}, {"prompt": "a", "completion": "b"}]
    _, s = prepare(exs, TOK, 20, policy="truncate")
    assert (s.truncated, s.skipped) == (1, 0)
    items, s = prepare(exs, TOK, 20, policy="skip")
    assert (s.truncated, s.skipped, len(items)) == (0, 1, 1)


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ('{"text": "ok"}\n{"text": "fine"}\n{broken\n', ":3: not valid JSON"),
        ('{"text": "ok"}\n[1, 2]\n', ":2: expected a JSON object"),
        ('{"question": "x"}\n', ":1: expected keys"),
        ('{"prompt": "x"}\n', ":1: 'completion' must be a string"),
        ('{"messages": [{"role": "user", "content": "x"}]}\n', "last message"),
    ],
)
def test_bad_jsonl_is_one_clear_error(tmp_path, content, match):
    p = tmp_path / "d.jsonl"
    p.write_text(content)
    with pytest.raises(MixloraError, match=match):
        read_jsonl(p)


def test_in_memory_examples_are_validated():
    with pytest.raises(MixloraError, match="empty list"):
        load_examples([])
    with pytest.raises(MixloraError, match="example 1"):
        load_examples([{"text": "a"}, {"nope": 1}])


# ---------------------------------------------------------------- training


def test_tiny_model_learns_tiny_task_to_full_accuracy():
    model = tiny_model()
    tok_model = (model, TOK)
    assert _greedy_accuracy(model, TASK) < 0.5
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = TrainConfig(
        rank=8,
        alpha=16,
        iters=150,
        lr=3e-3,
        warmup=5,
        batch_size=12,  # the whole task each step (packed into one or two rows)
        max_seq_len=64,
        targets=targets,
    )
    res = train_adapter(tok_model, TASK, None, cfg, progress=False, detach=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"] / 3
    assert _greedy_accuracy(model, TASK) == 1.0


def test_two_runs_with_one_seed_are_bit_identical(tmp_path):
    cfg = TrainConfig(rank=4, iters=6, lr=1e-3, dropout=0.1, batch_size=2, max_seq_len=64, seed=7)
    outs = []
    for name in ("a", "b"):
        train_adapter((tiny_model(), TOK), _mixed_examples(), tmp_path / name, cfg, progress=False)
        outs.append(load_adapter(tmp_path / name)[1])
    assert outs[0].keys() == outs[1].keys()
    assert all(mx.array_equal(outs[0][k], outs[1][k]).item() for k in outs[0])
    cfg.seed = 8
    train_adapter((tiny_model(), TOK), _mixed_examples(), tmp_path / "c", cfg, progress=False)
    other = load_adapter(tmp_path / "c")[1]
    assert not all(mx.array_equal(outs[0][k], other[k]).item() for k in other)


def test_resume_ends_with_the_same_adapter(tmp_path):
    cfg = TrainConfig(
        rank=4,
        iters=9,
        lr=2e-3,
        warmup=2,
        dropout=0.1,
        grad_accum=2,
        batch_size=2,
        max_seq_len=64,
        save_every=3,
    )
    data = _mixed_examples(14)
    model = tiny_model()
    train_adapter((model, TOK), data, tmp_path / "straight", cfg, progress=False)
    res = train_adapter((model, TOK), data, tmp_path / "resumed", cfg, progress=False, stop_at=5)
    assert res.stopped_early and res.adapter_dir is None and not (tmp_path / "resumed").exists()
    ckpts = sorted(p.name for p in (tmp_path / "resumed.checkpoints").iterdir())
    assert ckpts == ["metrics.jsonl", "step_0000003", "step_0000005"]
    done = train_adapter((model, TOK), data, tmp_path / "resumed", cfg, progress=False, resume=True)
    assert done.steps == 9
    (ca, wa), (cb, wb) = load_adapter(tmp_path / "straight"), load_adapter(tmp_path / "resumed")
    assert all(mx.array_equal(wa[k], wb[k]).item() for k in wa)
    assert ca.extra["final_train_loss"] == cb.extra["final_train_loss"]


def test_resume_refuses_changed_options(tmp_path):
    cfg = TrainConfig(rank=4, iters=4, batch_size=2, max_seq_len=64)
    data = _mixed_examples(6)
    train_adapter((tiny_model(), TOK), data, tmp_path / "o", cfg, progress=False, stop_at=2)
    cfg.lr = 1e-3
    with pytest.raises(MixloraError, match="lr"):
        train_adapter((tiny_model(), TOK), data, tmp_path / "o", cfg, progress=False, resume=True)
    with pytest.raises(MixloraError, match="no checkpoint"):
        train_adapter((tiny_model(), TOK), data, tmp_path / "x", cfg, progress=False, resume=True)


def test_validation_loss_and_adapter_metadata(tmp_path):
    cfg = TrainConfig(
        rank=4, iters=4, batch_size=2, max_seq_len=64, val_every=2, name="toy", task="toy"
    )
    res = train_adapter(
        (tiny_model(), TOK), TASK, tmp_path / "ad", cfg, progress=False, val_data=TASK[:4]
    )
    assert res.val_loss is not None and "val_loss" in res.history[1]
    config, _ = load_adapter(tmp_path / "ad")
    assert config.name == "toy" and config.layers == [0, 1]
    assert config.extra["train"]["iters"] == 4 and config.extra["final_val_loss"] == res.val_loss
    assert config.base_model["hidden_size"] == 64


def test_loaded_model_is_restored_after_training(tmp_path):
    from mlx.utils import tree_flatten

    model = tiny_model()
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    train_adapter(
        (model, TOK), TASK, tmp_path / "a", TrainConfig(iters=2, max_seq_len=64), progress=False
    )
    after = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    assert before.keys() == after.keys() and all(
        np.array_equal(before[k], after[k]) for k in before
    )


def test_bad_options_fail_before_any_output(tmp_path):
    for cfg, match in [
        (TrainConfig(targets=["nope_proj"]), "matches nothing"),
        (TrainConfig(layers="0-5"), "has 2 layers"),
        (TrainConfig(rank=0), "rank"),
    ]:
        with pytest.raises(MixloraError, match=match):
            train_adapter((tiny_model(), TOK), TASK, tmp_path / "out", cfg, progress=False)
        assert not (tmp_path / "out").exists()
    (tmp_path / "exists").mkdir()
    with pytest.raises(MixloraError, match="already exists"):
        train_adapter((tiny_model(), TOK), TASK, tmp_path / "exists", TrainConfig(), progress=False)


def test_recipe_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("rank: 4\nlr: 0.001\nmax-seq-len: 128\ntargets: [q_proj, v_proj]\n")
    d = load_recipe(p)
    assert TrainConfig.from_dict(d).max_seq_len == 128
    p.write_text("rnak: 4\n")
    with pytest.raises(MixloraError, match="unknown keys"):
        load_recipe(p)
    p.write_text(json.dumps({"rank": "x"}))
    with pytest.raises(MixloraError):
        load_recipe(p)


def test_cross_entropy_rows_matches_reference_values_and_grads():
    from mlx_mixlora.train.loss import cross_entropy_rows

    for tied in (False, True):
        model = tiny_model(tie_word_embeddings=tied)
        h = mx.random.normal((10, 64))
        labels = mx.array(np.random.default_rng(0).integers(0, 64, 10).astype(np.int32))

        def ref(h, model=model, labels=labels):
            return nn.losses.cross_entropy(lm_head(model, h), labels).sum()

        def ours(h, model=model, labels=labels):
            return cross_entropy_rows(model, h, labels).sum()

        (a, ga), (b, gb) = mx.value_and_grad(ref)(h), mx.value_and_grad(ours)(h)
        assert abs(a.item() - b.item()) <= 1e-4
        assert mx.allclose(ga, gb, atol=1e-5).item()


def test_split_streams_match_a_single_stream():
    from mlx.utils import tree_flatten

    from mlx_mixlora.adapter_format import AdapterConfig
    from mlx_mixlora.lora import attach_lora, lora_modules
    from mlx_mixlora.train.parallel import SplitStep

    model = tiny_model()
    attach_lora(model, AdapterConfig(rank=4, alpha=8, targets=["q_proj", "o_proj"], layers=[0, 1]))
    for m in lora_modules(model).values():
        m.lora_b = mx.ones(m.lora_b.shape) * 0.05
    items, _ = prepare(_mixed_examples(8), TOK, 64)
    rows = [[i] for i in range(8)]
    (l0, n0), g0 = nn.value_and_grad(model, target_loss)(
        model, *_arrays(make_batch(items, rows, 64, packed=False))
    )
    split = SplitStep(model, target_loss, 2)
    parts = [
        _arrays(make_batch(items, rows[:3], 64, False)),
        _arrays(make_batch(items, rows[3:], 64, False)),
    ]
    l1, n1, g1 = split(parts)
    assert n0.item() == n1.item() and abs(l0.item() - l1.item()) <= 1e-5
    for (k, a), (_, b) in zip(tree_flatten(g0), tree_flatten(g1), strict=True):
        assert mx.allclose(a, b, atol=1e-5).item(), k
    # the model holds its real parameters again after the traced call
    assert all(isinstance(m.lora_a, mx.array) for m in lora_modules(model).values())
    assert mx.array_equal(split(parts)[0], l1).item()


def test_resume_is_bit_identical_with_split_streams(tmp_path):
    cfg = TrainConfig(
        rank=4, iters=6, lr=2e-3, batch_size=4, max_seq_len=64, save_every=2, streams=2
    )
    data = _mixed_examples(14)
    model = tiny_model()
    train_adapter((model, TOK), data, tmp_path / "straight", cfg, progress=False)
    train_adapter((model, TOK), data, tmp_path / "resumed", cfg, progress=False, stop_at=4)
    train_adapter((model, TOK), data, tmp_path / "resumed", cfg, progress=False, resume=True)
    wa, wb = load_adapter(tmp_path / "straight")[1], load_adapter(tmp_path / "resumed")[1]
    assert all(mx.array_equal(wa[k], wb[k]).item() for k in wa)


class _ChatTokenizer(CharTokenizer):
    chat_template = "role: content"

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return self.encode(text + ("assistant: " if add_generation_prompt else ""))


def test_chat_messages_mask_everything_but_the_last_answer():
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    items, _ = prepare([chat], _ChatTokenizer(), 128)
    t = items[0]
    assert _ChatTokenizer().decode(t.ids[t.target_start :]) == "yo\n"
    with pytest.raises(MixloraError, match="chat template"):
        prepare([chat], TOK, 128)


def test_auto_pack_packs_short_examples_only():
    from mlx_mixlora.train.trainer import auto_pack

    short = [Tokenized(list(range(10)), 1)] * 5
    long = [Tokenized(list(range(200)), 1)] * 5
    assert auto_pack(short, 64) and not auto_pack(long, 256)
    res = train_adapter(
        (tiny_model(), TOK), TASK, None, TrainConfig(iters=1, max_seq_len=64), progress=False
    )
    assert res.config.extra["train"]["pack"] is True


def test_qlora_trains_on_a_quantized_base():
    from mlx.utils import tree_flatten

    model = tiny_model()
    nn.quantize(model, group_size=32, bits=4)
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    cfg = TrainConfig(rank=4, iters=20, lr=3e-3, batch_size=4, max_seq_len=64)
    res = train_adapter((model, TOK), TASK, None, cfg, progress=False)
    assert np.isfinite(res.train_loss) and res.history[-1]["loss"] < res.history[0]["loss"]
    after = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    assert all(np.array_equal(before[k], after[k]) for k in before)  # base untouched, LoRA detached
