"""Score methods on tasks: the task × method matrix behind `mixlora demo`.

A *method* is anything that puts a loaded model into the state in which a task
is evaluated: the bare base, one attached adapter, a merged adapter, fused
deltas, a router... It is a name plus a context manager factory
``use(model, task) -> ContextManager``, so merging and routing plug in without
this module knowing about them.

Label tasks are scored two ways: free generation (greedy decode, normalised
exact match) and label scoring (the log-likelihood of each allowed label plus
end-of-sequence after the prompt; the best label is the prediction). Text tasks
are scored by ROUGE-L of the greedy generation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models import llama
from mlx_lm.models.cache import (
    BatchKVCache,
    KVCache,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)
from tqdm import tqdm

from .cpu.streams import default_streams, map_on_streams
from .lora import detach_lora, load_adapter_into
from .tasks import Task
from .tasks import metrics as M

# The score shown in the matrix: free-generation accuracy / ROUGE-L.
PRIMARY = {"accuracy": "accuracy_gen", "rouge_l": "rouge_l"}
_LOGITS_BUDGET = (
    64 * 2**20
)  # max logits floats per forward batch (bounds memory on big vocabularies)


@dataclass
class Method:
    """A way to prepare the model for a task; `use` undoes itself on exit."""

    name: str
    use: Callable[[Any, Task], AbstractContextManager] = field(
        default=lambda model, task: contextlib.nullcontext()
    )
    kind: str = "base"
    info: dict = field(default_factory=dict)
    # Optional own scorer `(model, tokenizer, task, examples) -> metrics` for methods
    # that change per prompt (routing); `use` still wraps it.
    score: Callable[[Any, Any, Task, list[dict]], dict] | None = None


def base_method(name: str = "base") -> Method:
    return Method(name=name, kind="base")


def adapter_method(
    name: str, adapter_dir: str | Path, base: dict | None = None, kind: str = "adapter"
) -> Method:
    """Attach the adapter at `adapter_dir` (any adapter-format dir, merged ones too)."""

    @contextlib.contextmanager
    def use(model, task: Task) -> Iterator[None]:
        load_adapter_into(model, adapter_dir, base=base)
        try:
            yield
        finally:
            detach_lora(model)

    return Method(name=name, use=use, kind=kind, info={"adapter": str(adapter_dir)})


# ---------------------------------------------------------------- token helpers


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return list(tokenizer.encode(prompt, add_special_tokens=True))


def encode_continuation(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _eos_ids(tokenizer) -> set[int]:
    ids = getattr(tokenizer, "eos_token_ids", None)
    if ids:
        return {int(i) for i in ids}
    eos = getattr(tokenizer, "eos_token_id", None)
    return {int(eos)} if eos is not None else set()


def _batches(lengths: list[int], vocab: int) -> Iterator[list[int]]:
    """Index groups whose padded logits stay under the memory budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    group: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in group] + [lengths[i]])
        if group and (len(group) + 1) * longest * vocab > _LOGITS_BUDGET:
            yield group
            group = []
        group.append(i)
    if group:
        yield group


def _forward(model, seqs: list[list[int]], pad: int):
    width = max(len(s) for s in seqs)
    x = np.full((len(seqs), width), pad, dtype=np.int32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return model(mx.array(x))


# ---------------------------------------------------------------- scoring


def sequence_logprobs(
    model, prompts: list[list[int]], continuations: list[list[int]], vocab: int
) -> np.ndarray:
    """Sum of log p(continuation tokens | prompt) for each (prompt, continuation) pair.

    Sequences are right-padded: with a causal mask the pads never affect the
    scored positions, so batching is exact.
    """

    seqs = [p + c for p, c in zip(prompts, continuations, strict=True)]
    out = np.zeros(len(seqs), dtype=np.float64)
    for group in _batches([len(s) for s in seqs], vocab):
        logits = _forward(model, [seqs[i] for i in group], pad=0).astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        rows, cols, toks = [], [], []
        for r, i in enumerate(group):
            start = len(prompts[i])
            for k, tok in enumerate(continuations[i]):
                rows.append(r)
                cols.append(start + k - 1)
                toks.append(tok)
        picked = logp[mx.array(rows), mx.array(cols), mx.array(toks)]
        picked = np.array(picked, dtype=np.float64)
        sums = np.zeros(len(group))
        np.add.at(sums, np.array(rows), picked)
        out[group] = sums
    return out


def _same_length_groups(seqs: list[list[int]], vocab: int) -> Iterator[list[int]]:
    """Indices of equal-length sequences, chunked to the logits budget.

    Equal lengths need no padding, so a batch shares one KV cache exactly.
    """
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for length, idx in sorted(by_len.items()):
        step = max(1, _LOGITS_BUDGET // max(length * vocab, 1))
        for k in range(0, len(idx), step):
            yield idx[k : k + step]


def _log_softmax(logits):
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def label_scores(
    model, tokenizer, prompts: list[str], labels: list[str], exact: bool = False
) -> np.ndarray:
    """[n_prompts, n_labels] log-likelihood of " label</s>" after each prompt.

    Each prompt is run once into a KV cache (batched as `_prefilled` says); every
    label continues from it and is trimmed off again, so k labels cost one prompt
    pass, not k.
    """

    p_ids = [encode_prompt(tokenizer, p) for p in prompts]
    return _label_scores_of(model, p_ids, _label_ids(tokenizer, labels), exact)


def _label_scores_of(
    model, p_ids: list[list[int]], l_ids: list[list[int]], exact: bool = False
) -> np.ndarray:
    """`label_scores` of encoded prompts and labels (no tokenizer: safe on worker threads)."""
    if not can_trim_prompt_cache(make_prompt_cache(model)):  # e.g. rotating caches
        flat = sequence_logprobs(
            model,
            [p for p in p_ids for _ in l_ids],
            [lab for _ in p_ids for lab in l_ids],
            _vocab(model),
        )
        return flat.reshape(len(p_ids), len(l_ids))
    out = np.zeros((len(p_ids), len(l_ids)), dtype=np.float64)
    for idx, cache, last in _prefilled(model, p_ids, exact):
        out[idx] = _label_logprobs(model, cache, last, l_ids)
    return out


def _label_ids(tokenizer, labels: list[str]) -> list[list[int]]:
    """Each label's continuation ids: " label" then end-of-sequence."""
    eos = sorted(_eos_ids(tokenizer))[:1]
    return [encode_continuation(tokenizer, " " + lab) + eos for lab in labels]


def _label_logprobs(model, cache, last: mx.array, l_ids: list[list[int]]) -> np.ndarray:
    """[rows, labels] log-likelihood of each label after the prefilled prompts.

    Each label continues from `cache` and is trimmed off again, so the cache is
    left as the prefill left it.
    """
    first = _log_softmax(last)
    out = np.zeros((last.shape[0], len(l_ids)), dtype=np.float64)
    for j, lab in enumerate(l_ids):
        total = first[:, lab[0]]
        if len(lab) > 1:
            rest = _log_softmax(model(mx.array([lab[:-1]] * last.shape[0]), cache=cache))
            total = total + rest[:, mx.arange(len(lab) - 1), mx.array(lab[1:])].sum(axis=-1)
            trim_prompt_cache(cache, len(lab) - 1)
        out[:, j] = np.array(total, dtype=np.float64)
    return out


def _prefilled(
    model, seqs: list[list[int]], exact: bool
) -> Iterator[tuple[list[int], list, mx.array]]:
    """(indices, KV cache, last-position logits) for each batch of prompts run together.

    By default prompts of any lengths share a batch, left-padded: a `BatchKVCache`
    masks the pads and starts each row's positions at its first real token, so each
    row is computed as alone up to float rounding (batch shapes change the order of
    some sums). A batch of equal lengths, `exact=True`, or a model whose cache is not
    a plain `KVCache` (rotating, quantised, recurrent) uses only equal-length batches
    with the model's own cache: no padding at all.
    """
    vocab = _vocab(model)
    if exact or not _left_paddable(model):
        groups = list(_same_length_groups(seqs, vocab))
    else:
        groups = list(_batches([len(s) for s in seqs], vocab))
    for idx in groups:
        lengths = [len(seqs[i]) for i in idx]
        width = max(lengths)
        if min(lengths) == width:
            cache = make_prompt_cache(model)
            x = mx.array([seqs[i] for i in idx])
        else:
            pads = [width - n for n in lengths]
            cache = [BatchKVCache(pads) for _ in make_prompt_cache(model)]
            rows = np.zeros((len(idx), width), dtype=np.int32)
            for r, i in enumerate(idx):
                rows[r, pads[r] :] = seqs[i]
            x = mx.array(rows)
        yield idx, cache, _last_logits(model, x, cache)


def _last_logits(model, x: mx.array, cache) -> mx.array:
    """Logits at each row's last position: an mlx-lm Llama's LM head on those rows only,
    not on every prompt position (on the nano base that head is a sixth of a prefill)."""
    if isinstance(model, llama.Model):
        h = model.model(x, cache)[:, -1:]
        tied = model.args.tie_word_embeddings
        out = model.model.embed_tokens.as_linear(h) if tied else model.lm_head(h)
        return out[:, -1]
    return model(x, cache=cache)[:, -1]


def _left_paddable(model) -> bool:
    return all(type(c) is KVCache for c in make_prompt_cache(model))


def greedy_generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, exact: bool = False
) -> list[str]:
    """Greedy continuations, stopped at end-of-sequence or a newline.

    Prompts are decoded in batches sharing one KV cache (see `_prefilled`);
    ``exact=True`` batches only prompts of equal token length (no padding, so
    exactly what one-at-a-time decoding gives).
    """

    seqs = [encode_prompt(tokenizer, p) for p in prompts]
    return _generate(model, tokenizer, seqs, max_new_tokens, exact)[0]


def generate_and_score_labels(
    model, tokenizer, prompts: list[str], max_new_tokens: int, labels: list[str]
) -> tuple[list[str], np.ndarray]:
    """`greedy_generate` and `label_scores` of the same prompts from one prefill of each.

    The labels are scored from the prefilled cache and trimmed off, then decoding
    continues from it: the same texts and scores as the two calls, one prompt pass
    instead of two. Models whose cache cannot be trimmed score the labels in a pass of their own.
    """
    seqs = [encode_prompt(tokenizer, p) for p in prompts]
    return _generate(model, tokenizer, seqs, max_new_tokens, False, _label_ids(tokenizer, labels))


def _generate(
    model, tokenizer, seqs: list[list[int]], max_new_tokens: int, exact: bool, l_ids=None
) -> tuple[list[str], np.ndarray | None]:
    """Greedy texts of the encoded prompts `seqs`, and with label ids `l_ids` their label
    log-likelihoods scored from the same prefill (before decoding goes on from it).

    It only decodes with `tokenizer`: decoding from several threads at once is safe,
    encoding is not (a fast tokenizer's encode borrows it mutably: "Already borrowed").
    """
    eos = _eos_ids(tokenizer)
    texts = [""] * len(seqs)
    scores = None
    together = l_ids is not None and can_trim_prompt_cache(make_prompt_cache(model))
    if together:
        scores = np.zeros((len(seqs), len(l_ids)), dtype=np.float64)
    elif l_ids is not None:  # the labels cannot be trimmed off the cache: a pass of their own
        scores = _label_scores_of(model, seqs, l_ids)
    for idx, cache, logits in _prefilled(model, seqs, exact):
        if together:
            scores[idx] = _label_logprobs(model, cache, logits, l_ids)
        _decode(model, tokenizer, eos, idx, cache, logits, max_new_tokens, texts)
    return [t.strip() for t in texts], scores


def _decode(model, tokenizer, eos, idx, cache, logits, max_new_tokens: int, texts: list[str]):
    """Greedy decoding of one prefilled batch into `texts` (rows `idx`)."""
    gen: list[list[int]] = [[] for _ in idx]
    done = [False] * len(idx)
    for step in range(max_new_tokens):
        nxt = mx.argmax(logits, axis=-1)
        for r, tok in enumerate(nxt.tolist()):
            if done[r]:
                continue
            if tok in eos:
                done[r] = True
                continue
            gen[r].append(int(tok))
            text = tokenizer.decode(gen[r])
            if "\n" in text:
                text, done[r] = text.split("\n", 1)[0], True
            texts[idx[r]] = text
        if all(done) or step == max_new_tokens - 1:
            break
        logits = model(nxt[:, None], cache=cache)[:, -1]


def _vocab(model) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "vocab_size", 32000) or 32000)


# ---------------------------------------------------------------- one task, many methods


def _chunks(n: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """[start, end) of near-equal chunks of n rows: at most batch_size each, at least `workers`."""
    k = min(n, max(workers, -(-n // batch_size)))
    edges = [round(i * n / k) for i in range(k + 1)] if k else [0]
    return list(zip(edges[:-1], edges[1:], strict=True))


def score_task(
    model,
    tokenizer,
    task: Task,
    examples: list[dict],
    batch_size: int = 64,
    workers: int | None = None,
) -> dict:
    """All metrics of `task` for the model as it is now; `examples` are prompt/completion pairs.

    The prompts are split into chunks decoded `workers` at a time on CPU streams of
    their own (`cpu.streams`; default: 2 on the CPU, 1 on a GPU): decoding is small
    GEMMs and single-threaded elementwise work, which one stream runs on one core.
    """
    prompts = [e["prompt"] for e in examples]
    refs = [e["completion"].strip() for e in examples]
    t0 = time.perf_counter()
    workers = workers or default_streams()
    # encoded here, once: the workers only decode (see `_generate`)
    seqs = [encode_prompt(tokenizer, p) for p in prompts]
    l_ids = _label_ids(tokenizer, task.label_names) if task.is_label_task else None

    def run(chunk: tuple[int, int]) -> tuple[list[str], np.ndarray | None]:
        return _generate(model, tokenizer, seqs[slice(*chunk)], task.max_new_tokens, False, l_ids)

    chunks = _chunks(len(prompts), batch_size, workers)
    if workers > 1 and len(chunks) > 1:
        # A worker cannot evaluate an array made lazily on this thread's stream (a fused
        # delta, a loaded adapter, a RoPE table): one forward here evaluates all it reads.
        mx.eval(model(mx.array([[0]])))
    done = map_on_streams(run, chunks, workers)
    gens = [t for texts, _ in done for t in texts]
    parts = [part for _, part in done]  # label tasks: label scores from the same prefill
    result: dict[str, Any] = {"n": len(examples)}
    if task.is_label_task:
        labels = task.label_names
        scores = np.concatenate(parts)
        ll_preds = [labels[j] for j in scores.argmax(axis=1)]
        result.update(
            accuracy_gen=M.accuracy(gens, refs),
            macro_f1_gen=M.macro_f1(gens, refs, labels),
            accuracy_ll=M.accuracy(ll_preds, refs),
            macro_f1_ll=M.macro_f1(ll_preds, refs, labels),
            chance=max(refs.count(lab) for lab in labels) / len(refs),
        )
    else:
        result.update(M.mean_rouge(gens, refs))
    result["score"] = result[PRIMARY[task.metric]]
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["samples"] = [
        {"prompt": p, "reference": r, "generation": g}
        for p, r, g in list(zip(prompts, refs, gens, strict=True))[:3]
    ]
    return result


def evaluate_matrix(
    model,
    tokenizer,
    tasks: list[Task],
    eval_sets: dict[str, list[dict]],
    methods: list[Method],
    progress: bool = True,
) -> dict:
    """`{"tasks", "methods", "scores": {method: {task: metrics}}}` for every pair."""
    bar = tqdm(total=len(tasks) * len(methods), desc="evaluate", disable=not progress, unit="cell")
    scores: dict[str, dict[str, dict]] = {}
    for method in methods:
        scores[method.name] = {}
        for task in tasks:
            bar.set_postfix_str(f"{method.name} on {task.name}")
            t0 = time.perf_counter()
            with method.use(model, task):
                if method.score is None:
                    cell = score_task(model, tokenizer, task, eval_sets[task.name])
                else:
                    cell = dict(method.score(model, tokenizer, task, eval_sets[task.name]))
                    cell.setdefault("score", cell[PRIMARY[task.metric]])
                    cell.setdefault("seconds", round(time.perf_counter() - t0, 2))
            scores[method.name][task.name] = cell
            bar.update(1)
    bar.close()
    return {
        "tasks": [t.name for t in tasks],
        "methods": [{"name": m.name, "kind": m.kind, **m.info} for m in methods],
        "primary_metric": {t.name: PRIMARY[t.metric] for t in tasks},
        "scores": scores,
    }
