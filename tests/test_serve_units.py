"""The server's pieces without HTTP: stop strings while streaming, per-row seeded sampling."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_mixlora  # noqa: F401
from mlx_mixlora.serve.sampling import RowSampler, sample_rows
from mlx_mixlora.serve.text import TextStream

PIECES = ["a", "b", "ab", "ba", " ", "abc", "c", ""]


class _Detok:
    """mlx-lm's streaming detokenizer interface over fixed token strings."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.text, self.offset = "", 0

    def add_token(self, t):
        self.text += PIECES[t]

    def finalize(self):
        pass

    @property
    def last_segment(self):
        seg = self.text[self.offset :]
        self.offset = len(self.text)
        return seg


class _Tok:
    @property
    def detokenizer(self):
        return _Detok()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, len(PIECES) - 1), max_size=30),
    st.lists(st.text(alphabet="abc ", min_size=1, max_size=4), max_size=3),
)
def test_streamed_text_is_the_text_cut_at_the_first_stop(tokens, stops):
    ts = TextStream(_Tok(), stops)
    out = []
    for t in tokens:
        out.append(ts.add(t))
        for s in stops:  # nothing sent may ever contain a whole stop string
            assert s not in "".join(out)
        if ts.stopped:
            break
    out.append(ts.finish())
    # Generation ends after the first token whose text completes a stop string; the answer is
    # that text cut where the earliest stop in it starts (a longer stop that would start
    # earlier but needs later tokens never happens).
    text, hits = "", []
    for t in tokens:
        text += PIECES[t]
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            break
    assert "".join(out) == (text[: min(hits)] if hits else text)
    assert ts.stopped == bool(hits)


def test_a_seeded_row_draws_the_same_tokens_whatever_shares_its_batch():
    rng = np.random.default_rng(0)
    steps = [mx.array(rng.normal(size=(3, 50)).astype(np.float32)) for _ in range(6)]
    alone = RowSampler(0.9, top_p=0.8, seed=5)
    crowd = [RowSampler(0.0), RowSampler(1.2, seed=9), RowSampler(0.9, top_p=0.8, seed=5)]
    a = [sample_rows(s[2:3], [alone])[0] for s in steps]
    b = [sample_rows(s, crowd) for s in steps]
    assert a == [row[2] for row in b]
    assert [row[0] for row in b] == [int(np.argmax(np.array(s[0]))) for s in steps]
    other = RowSampler(0.9, top_p=0.8, seed=6)
    assert [sample_rows(s[2:3], [other])[0] for s in steps] != a


def test_top_p_keeps_only_the_nucleus():
    logits = mx.log(mx.array([[0.6, 0.3, 0.05, 0.05]]))
    drawn = {sample_rows(logits, [RowSampler(1.0, top_p=0.7, seed=s)])[0] for s in range(40)}
    assert drawn == {0, 1}
