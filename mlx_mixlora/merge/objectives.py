"""What learned merges minimise, on padded blocks of calibration sequences.

- `entropy` (AdaMerging, unlabelled): on a label task, the entropy of the next-token
  distribution restricted to the allowed labels' first tokens, plus the
  negative log of the mass those tokens hold (a merge that answers a label task
  with another task's words is not "confident", it is off the task's format);
  on a generation task, the full next-token entropy at each position of a
  continuation (the continuation comes from the task's own adapter: no label).
- `distill` (unlabelled): KL from each prompt's own adapter (the teacher) to the
  merge, at the same positions as `entropy`.
- `cross_entropy` (LoraHub, `--search`, labelled): mean token loss of the
  reference answer.

Every task weighs the same whatever its number of prompts or tokens.
Each loss is a weighted sum over rows, so the rows are split into blocks
(`Part`s) of one task and similar length, each padded only to its own longest
row: the padding the forward and backward passes compute on shrinks, and the
sum is the same. Sequences are right-padded; with a causal mask the pads never
reach a scored position, so batching is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import MixloraError
from ..scoring import encode_continuation, encode_prompt
from ..train.forward import hidden_states, lm_head
from .calibration import CalibExample

FORMAT_WEIGHT = 1.0  # weight of -log(mass on the allowed labels) in the label entropy
# What one more block costs, in padded token positions (its own graph and kernel launches):
# a block is split off when that saves more padding than this.
BLOCK_COST_TOKENS = 256


@dataclass
class Part:
    """One block: token ids plus the positions each objective reads (row indices into `tokens`)."""

    task: str
    tokens: mx.array  # [B, T] int32
    label_rows: mx.array  # [Bl]
    label_pos: mx.array  # [Bl]
    label_ids: mx.array  # [Bl, K] first token of each allowed label (padded by repeats)
    label_valid: mx.array  # [Bl, K] bool
    label_weight: mx.array  # [Bl]
    seq_rows: mx.array  # [P] every scored continuation position
    seq_pos: mx.array  # [P]
    seq_next: mx.array  # [P] the continuation token at that position
    seq_weight: mx.array  # [P]
    teacher: tuple[mx.array, mx.array] | None = None  # distill: log-probs at label / seq positions


@dataclass
class Batch:
    """Every calibration row, in blocks of one task each (see the module docstring)."""

    parts: list[Part]


@dataclass
class _Row:
    task: str
    ids: list[int]
    weight: float
    label_ids: list[int] | None = None  # a label row: scored at its last position
    cont: list[int] | None = None  # a continuation row: scored at each continuation token
    start: int = 0  # position whose next token is cont[0]


def build_batch(
    tokenizer,
    calib: Sequence[CalibExample],
    continuations: Sequence[Sequence[int] | None],
    labels_first: bool = True,
) -> Batch:
    """Label rows (when `labels_first` and the row has labels) and continuation rows, in blocks.

    `continuations[i]` are the token ids after prompt i (a reference answer, or a
    teacher's generation); a row with neither labels nor a continuation is refused.
    """
    tasks = sorted({c.task for c in calib})
    per_task = {t: sum(1 for c in calib if c.task == t) for t in tasks}
    rows: list[_Row] = []
    for i, (c, cont) in enumerate(zip(calib, continuations, strict=True)):
        prompt = encode_prompt(tokenizer, c.prompt)
        w_row = 1.0 / (len(tasks) * per_task[c.task])
        if labels_first and c.labels:
            firsts = (encode_continuation(tokenizer, " " + x)[0] for x in c.labels)
            rows.append(_Row(c.task, prompt, w_row, label_ids=list(dict.fromkeys(firsts))))
            continue
        if not cont:
            raise MixloraError(f"calibration prompt {i} ({c.task}) has no labels and no answer")
        cont = [int(t) for t in cont]
        # the last token is only ever a target: no scored position reads it as input
        rows.append(_Row(c.task, prompt + cont[:-1], w_row, cont=cont, start=len(prompt) - 1))
    parts = []
    for task in tasks:
        mine = sorted((r for r in rows if r.task == task), key=lambda r: len(r.ids))
        for block in _blocks(mine):
            parts.append(_part(task, block))
    return Batch(parts)


def _blocks(rows: list[_Row]) -> list[list[_Row]]:
    """Rows sorted by length, cut where the padding saved outweighs `BLOCK_COST_TOKENS`.

    Dynamic programming over the cut points: cost = Σ rows × longest row + cost per block.
    """
    n = len(rows)
    if n == 0:
        return []
    lens = [len(r.ids) for r in rows]
    best = [0.0] + [float("inf")] * n  # best[j]: cost of rows[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lens[j - 1] + BLOCK_COST_TOKENS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], n
    while j > 0:
        out.append(rows[cut[j] : j])
        j = cut[j]
    return out[::-1]


def _part(task: str, rows: list[_Row]) -> Part:
    width = max(len(r.ids) for r in rows)
    tokens = np.zeros((len(rows), width), dtype=np.int32)
    lrows, lpos, lids, lw, srows, spos, snext, sw = [], [], [], [], [], [], [], []
    for r, row in enumerate(rows):
        tokens[r, : len(row.ids)] = row.ids
        if row.label_ids is not None:
            lrows.append(r)
            lpos.append(len(row.ids) - 1)
            lids.append(row.label_ids)
            lw.append(row.weight)
            continue
        for k, tok in enumerate(row.cont):
            srows.append(r)
            spos.append(row.start + k)
            snext.append(tok)
            sw.append(row.weight / len(row.cont))
    k = max((len(x) for x in lids), default=1)
    ids = np.array([x + [x[0]] * (k - len(x)) for x in lids] or [[0]], dtype=np.int32)
    valid = np.array(
        [[j < len(x) for j in range(k)] for x in lids] or [[True]]
    )  # no label rows: weight 0
    return Part(
        task,
        mx.array(tokens),
        mx.array(np.array(lrows or [0], dtype=np.int32)),
        mx.array(np.array(lpos or [0], dtype=np.int32)),
        mx.array(ids),
        mx.array(valid),
        mx.array(np.array(lw or [0.0], dtype=np.float32)),
        mx.array(np.array(srows or [0], dtype=np.int32)),
        mx.array(np.array(spos or [0], dtype=np.int32)),
        mx.array(np.array(snext or [0], dtype=np.int32)),
        mx.array(np.array(sw or [0.0], dtype=np.float32)),
    )


def _log_softmax(x: mx.array) -> mx.array:
    x = x.astype(mx.float32)
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


class _Logits:
    """Next-token logits at chosen (row, position) pairs: the decoder runs once, the LM head
    only on the gathered positions. An mlx-lm Llama runs through the trainer's forward
    (`train.forward`: op-for-op mlx-lm's, with the CPU's fast exp in attention and SiLU);
    any other mlx-lm model through its own decoder stack (``model.model``), and any other
    callable model whole, then gathered.
    """

    def __init__(self, model, tokens: mx.array):
        self.model = model
        inner = getattr(model, "model", None)
        self.whole = inner is None or not hasattr(inner, "embed_tokens")
        if self.whole:
            self.h = model(tokens)
        elif type(model).__module__ == "mlx_lm.models.llama":
            self.h = hidden_states(model, tokens)
        else:
            self.h = inner(tokens)

    def at(self, rows: mx.array, pos: mx.array) -> mx.array:
        h = self.h[rows, pos]
        return h if self.whole else lm_head(self.model, h)


def _summed(per_part, model, b: Batch) -> mx.array:
    total = per_part(model, b.parts[0])
    for p in b.parts[1:]:
        total = total + per_part(model, p)
    return total


def _entropy(model, p: Part) -> mx.array:
    logits = _Logits(model, p.tokens)
    lp = _log_softmax(logits.at(p.label_rows, p.label_pos))  # [Bl, V]
    sel = mx.take_along_axis(lp, p.label_ids, axis=-1)
    sel = mx.where(p.label_valid, sel, -mx.inf)
    mass = mx.logsumexp(sel, axis=-1)  # log of the probability on the allowed labels
    q = mx.where(p.label_valid, sel - mass[:, None], 0.0)
    h_label = -(mx.exp(q) * q).sum(axis=-1) - FORMAT_WEIGHT * mass
    sp = _log_softmax(logits.at(p.seq_rows, p.seq_pos))  # [P, V]
    h_seq = -(mx.exp(sp) * sp).sum(axis=-1)
    return (p.label_weight * h_label).sum() + (p.seq_weight * h_seq).sum()


def entropy(model, b: Batch) -> mx.array:
    """AdaMerging's objective (see the module docstring); a scalar."""
    return _summed(_entropy, model, b)


def teacher_logprobs(model, p: Part) -> tuple[mx.array, mx.array]:
    """Log-probs at a block's label and continuation positions, as `distill` stores them."""
    logits = _Logits(model, p.tokens)
    return (
        _log_softmax(logits.at(p.label_rows, p.label_pos)),
        _log_softmax(logits.at(p.seq_rows, p.seq_pos)),
    )


def _distill(model, p: Part) -> mx.array:
    if p.teacher is None:
        raise MixloraError("distill needs the teachers' log-probs (Part.teacher)")
    lp, sp = teacher_logprobs(model, p)
    t_lp, t_sp = p.teacher
    kl_label = (mx.exp(t_lp) * (t_lp - lp)).sum(axis=-1)
    kl_seq = (mx.exp(t_sp) * (t_sp - sp)).sum(axis=-1)
    return (p.label_weight * kl_label).sum() + (p.seq_weight * kl_seq).sum()


def distill(model, b: Batch) -> mx.array:
    """KL(teacher ‖ merged) at every scored position: the teacher is each prompt's own adapter.

    Unlabelled like `entropy`; its minimum (0) is reached exactly when the merge
    answers each task's prompts as that task's adapter does.
    """
    return _summed(_distill, model, b)


def _cross_entropy(model, p: Part) -> mx.array:
    sp = _log_softmax(_Logits(model, p.tokens).at(p.seq_rows, p.seq_pos))
    nll = -mx.take_along_axis(sp, p.seq_next[:, None], axis=-1)[:, 0]
    return (p.seq_weight * nll).sum()


def cross_entropy(model, b: Batch) -> mx.array:
    """Mean token loss of the continuations (references), tasks weighed equally; a scalar."""
    return _summed(_cross_entropy, model, b)


OBJECTIVES = {"entropy": entropy, "distill": distill, "cross_entropy": cross_entropy}
