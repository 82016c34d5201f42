"""Token ids → text deltas for one row: mlx-lm's streaming detokenizer plus stop strings.

The detokenizer is the one `stream_generate` uses (so the text equals
`mixlora generate`'s); stop strings are applied to the decoded text, and the
tail that could still become a stop string is held back until it cannot.
"""

from __future__ import annotations

from typing import Any


def _held(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextStream:
    """Feed tokens, get the newly safe text; `stopped` once a stop string appears."""

    def __init__(self, tokenizer: Any, stops: list[str]):
        self.detok = tokenizer.detokenizer
        self.detok.reset()
        self.stops = stops
        self.text = ""  # decoded so far (after a stop: cut before it)
        self.sent = 0  # characters of `text` already returned
        self.stopped = False

    def _cut(self) -> None:
        hits = [
            i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0
        ]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def add(self, token: int) -> str:
        self.detok.add_token(token)
        self.text += self.detok.last_segment
        return self._flush(final=False)

    def finish(self) -> str:
        """The rest of the text (call once, when the row ends for any reason)."""
        if not self.stopped:
            self.detok.finalize()
            self.text += self.detok.last_segment
        return self._flush(final=True)

    def _flush(self, final: bool) -> str:
        if self.stops and not self.stopped:
            self._cut()
        end = len(self.text)
        if not final and not self.stopped and self.stops:
            end -= _held(self.text, self.stops)
        end = max(end, self.sent)
        out = self.text[self.sent : end]
        self.sent = end
        return out
