"""What learned merges minimise, on one padded batch of calibration sequences.

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
Sequences are right-padded; with a causal mask the pads never reach a scored
position, so batching is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import MixloraError
from ..scoring import encode_continuation, encode_prompt
from .calibration import CalibExample

FORMAT_WEIGHT = 1.0  # weight of -log(mass on the allowed labels) in the label entropy


@dataclass
class Batch:
    """Token ids plus the positions each objective reads (row indices into `tokens`)."""

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


def build_batch(
    tokenizer,
    calib: Sequence[CalibExample],
    continuations: Sequence[Sequence[int] | None],
    labels_first: bool = True,
) -> Batch:
    """One batch: label rows (when `labels_first` and the row has labels) and continuation rows.

    `continuations[i]` are the token ids after prompt i (a reference answer, or a
    teacher's generation); a row with neither labels nor a continuation is refused.
    """
    tasks = sorted({c.task for c in calib})
    per_task = {t: sum(1 for c in calib if c.task == t) for t in tasks}
    seqs, lrows, lpos, lids, lw, srows, spos, snext, sw = [], [], [], [], [], [], [], [], []
    for i, (c, cont) in enumerate(zip(calib, continuations, strict=True)):
        prompt = encode_prompt(tokenizer, c.prompt)
        w_row = 1.0 / (len(tasks) * per_task[c.task])
        if labels_first and c.labels:
            seqs.append(prompt)
            lrows.append(len(seqs) - 1)
            lpos.append(len(prompt) - 1)
            lids.append(
                list(dict.fromkeys(encode_continuation(tokenizer, " " + x)[0] for x in c.labels))
            )
            lw.append(w_row)
            continue
        if not cont:
            raise MixloraError(f"calibration prompt {i} ({c.task}) has no labels and no answer")
        seqs.append(prompt + list(cont))
        for k in range(len(cont)):
            srows.append(len(seqs) - 1)
            spos.append(len(prompt) - 1 + k)
            snext.append(int(cont[k]))
            sw.append(w_row / len(cont))
    width = max(len(s) for s in seqs)
    tokens = np.zeros((len(seqs), width), dtype=np.int32)
    for r, s in enumerate(seqs):
        tokens[r, : len(s)] = s
    k = max((len(x) for x in lids), default=1)
    ids = np.array([x + [x[0]] * (k - len(x)) for x in lids] or [[0]], dtype=np.int32)
    valid = np.array(
        [[j < len(x) for j in range(k)] for x in lids] or [[True]]
    )  # no label rows: weight 0
    return Batch(
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
    only on the gathered positions. For an mlx-lm model (``model.model`` the decoder stack,
    ``lm_head`` or tied embeddings); any other callable model is run whole and gathered.
    """

    def __init__(self, model, tokens: mx.array):
        self.model = model
        inner = getattr(model, "model", None)
        self.whole = inner is None or not hasattr(inner, "embed_tokens")
        self.h = model(tokens) if self.whole else inner(tokens)

    def at(self, rows: mx.array, pos: mx.array) -> mx.array:
        h = self.h[rows, pos]
        if self.whole:
            return h
        m = self.model
        if getattr(m.args, "tie_word_embeddings", False) or not hasattr(m, "lm_head"):
            return m.model.embed_tokens.as_linear(h)
        return m.lm_head(h)


def entropy(model, b: Batch) -> mx.array:
    """AdaMerging's objective (see the module docstring); a scalar."""
    logits = _Logits(model, b.tokens)
    lp = _log_softmax(logits.at(b.label_rows, b.label_pos))  # [Bl, V]
    sel = mx.take_along_axis(lp, b.label_ids, axis=-1)
    sel = mx.where(b.label_valid, sel, -mx.inf)
    mass = mx.logsumexp(sel, axis=-1)  # log of the probability on the allowed labels
    q = mx.where(b.label_valid, sel - mass[:, None], 0.0)
    h_label = -(mx.exp(q) * q).sum(axis=-1) - FORMAT_WEIGHT * mass
    sp = _log_softmax(logits.at(b.seq_rows, b.seq_pos))  # [P, V]
    h_seq = -(mx.exp(sp) * sp).sum(axis=-1)
    return (b.label_weight * h_label).sum() + (b.seq_weight * h_seq).sum()


def teacher_logprobs(model, b: Batch) -> tuple[mx.array, mx.array]:
    """Log-probs at the label and continuation positions, as `distill` stores them."""
    logits = _Logits(model, b.tokens)
    return (
        _log_softmax(logits.at(b.label_rows, b.label_pos)),
        _log_softmax(logits.at(b.seq_rows, b.seq_pos)),
    )


def distill(model, b: Batch) -> mx.array:
    """KL(teacher ‖ merged) at every scored position: the teacher is each prompt's own adapter.

    Unlabelled like `entropy`; its minimum (0) is reached exactly when the merge
    answers each task's prompts as that task's adapter does.
    """
    if b.teacher is None:
        raise MixloraError("distill needs the teachers' log-probs (Batch.teacher)")
    lp, sp = teacher_logprobs(model, b)
    t_lp, t_sp = b.teacher
    kl_label = (mx.exp(t_lp) * (t_lp - lp)).sum(axis=-1)
    kl_seq = (mx.exp(t_sp) * (t_sp - sp)).sum(axis=-1)
    return (b.label_weight * kl_label).sum() + (b.seq_weight * kl_seq).sum()


def cross_entropy(model, b: Batch) -> mx.array:
    """Mean token loss of the continuations (references), tasks weighed equally; a scalar."""
    sp = _log_softmax(_Logits(model, b.tokens).at(b.seq_rows, b.seq_pos))
    nll = -mx.take_along_axis(sp, b.seq_next[:, None], axis=-1)[:, 0]
    return (b.seq_weight * nll).sum()


OBJECTIVES = {"entropy": entropy, "distill": distill, "cross_entropy": cross_entropy}
