"""Training data: jsonl or in-memory examples → token ids with a loss start.

Three shapes are accepted, one per example: ``{"text"}`` (loss on every token),
``{"prompt", "completion"}`` and chat ``{"messages"}`` (loss on the completion /
last assistant turn when prompts are masked). Every problem names the line.

Over-long policy (``max_seq_len`` counts tokens per example, EOS included):
``truncate`` keeps the first tokens of a text example and, for prompt/completion
and chat, drops prompt tokens right after BOS so the answer and the cue right
before it survive; ``skip`` drops the example. The counts are reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MixloraError
from ..validate import clip_example, loads_json, texts

LONG_POLICIES = ("truncate", "skip")


@dataclass
class Tokenized:
    """One example: `ids` and the index of the first token that is a loss target."""

    ids: list[int]
    target_start: int  # ids[target_start:] are predicted; >= 1

    @property
    def n_targets(self) -> int:
        return len(self.ids) - self.target_start


@dataclass
class DataStats:
    examples: int = 0
    truncated: int = 0
    skipped: int = 0
    tokens: int = 0
    targets: int = 0


def read_jsonl(path: str | Path) -> list[dict]:
    """Parse a jsonl file; blank lines are allowed, anything else must be a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise MixloraError(f"data file not found: {path}")
    out = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MixloraError(
                    f"{path}:{i}: not UTF-8 text ({e.reason} at byte {e.start})"
                ) from None
            if not line.strip():
                continue
            try:
                obj = loads_json(line, f"{path}:{i}")
            except json.JSONDecodeError as e:
                raise MixloraError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise MixloraError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            _check_example(obj, f"{path}:{i}")
            out.append(obj)
    if not out:
        raise MixloraError(f"{path}: no examples (the file is empty)")
    return out


def load_examples(data: str | Path | list[dict]) -> list[dict]:
    """A jsonl path or a list of dicts → validated example dicts."""
    if isinstance(data, (str, Path)):
        return read_jsonl(data)
    if not isinstance(data, (list, tuple)):
        raise MixloraError(
            f"training data must be a jsonl path or a list of dicts, got {type(data).__name__}"
        )
    if not data:
        raise MixloraError("no training examples given (empty list)")
    for i, ex in enumerate(data):
        if not isinstance(ex, dict):
            raise MixloraError(f"example {i}: expected a dict, got {type(ex).__name__}")
        _check_example(ex, f"example {i}")
    return list(data)


def _check_example(ex: dict, where: str) -> None:
    texts([ex], where)
    if "messages" in ex:
        msgs = ex["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise MixloraError(f"{where}: 'messages' must be a non-empty list")
        for m in msgs:
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise MixloraError(f"{where}: each message needs string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant":
            raise MixloraError(f"{where}: the last message must be the assistant's answer")
    elif "prompt" in ex or "completion" in ex:
        for key in ("prompt", "completion"):
            if not isinstance(ex.get(key), str):
                raise MixloraError(f"{where}: {key!r} must be a string")
        if not ex["completion"]:
            raise MixloraError(f"{where}: 'completion' is empty")
    elif "text" in ex:
        if not isinstance(ex["text"], str) or not ex["text"]:
            raise MixloraError(f"{where}: 'text' must be a non-empty string")
    else:
        raise MixloraError(
            f"{where}: expected keys 'text', 'prompt'+'completion' or 'messages', got {sorted(ex)}"
        )


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


def _eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [int(eos)] if eos is not None else []


def tokenize_example(ex: dict, tokenizer: Any, mask_prompt: bool = True) -> Tokenized:
    """Token ids for one example; `target_start` marks where the loss begins."""
    if "messages" in ex:
        if not getattr(tokenizer, "chat_template", None):
            raise MixloraError("chat 'messages' data needs a tokenizer with a chat template")
        prompt = list(
            tokenizer.apply_chat_template(
                ex["messages"][:-1], add_generation_prompt=True, tokenize=True
            )
        )
        full = list(tokenizer.apply_chat_template(ex["messages"], tokenize=True))
        if full[: len(prompt)] != prompt:  # template not prefix-stable: fall back to no masking
            prompt = full[:1]
        ids = full
        start = len(prompt) if mask_prompt else 1
    elif "prompt" in ex:
        prompt = _encode(tokenizer, ex["prompt"], True)
        completion = _encode(tokenizer, ex["completion"], False) + _eos(tokenizer)
        ids = prompt + completion
        start = len(prompt) if mask_prompt else 1
    else:
        ids = _encode(tokenizer, ex["text"], True) + _eos(tokenizer)
        start = 1
    return Tokenized(ids, max(1, start))


def fit_length(t: Tokenized, max_len: int, policy: str) -> Tokenized | None:
    """Apply the over-long policy; None means skip."""
    if len(t.ids) <= max_len:
        return t
    if policy == "skip":
        return None
    if t.target_start <= 1:  # loss on everything: keep the beginning
        return Tokenized(t.ids[:max_len], 1)
    drop = len(t.ids) - max_len
    prompt_body = t.target_start - 1  # tokens between BOS and the answer
    if drop <= prompt_body:
        ids = t.ids[:1] + t.ids[1 + drop :]
        return Tokenized(ids, t.target_start - drop)
    ids = (t.ids[:1] + t.ids[t.target_start :])[:max_len]  # answer alone too long
    return Tokenized(ids, 1)


def prepare(
    examples: list[dict],
    tokenizer: Any,
    max_seq_len: int,
    mask_prompt: bool = True,
    policy: str = "truncate",
) -> tuple[list[Tokenized], DataStats]:
    """Tokenize, apply the length policy, and count what happened."""
    if policy not in LONG_POLICIES:
        raise MixloraError(f"unknown over-long policy {policy!r}; use one of {LONG_POLICIES}")
    if max_seq_len < 2:
        raise MixloraError(f"max_seq_len must be >= 2, got {max_seq_len}")
    stats = DataStats(examples=len(examples))
    out = []
    for ex in examples:
        t = tokenize_example(clip_example(ex, max_seq_len), tokenizer, mask_prompt)
        if len(t.ids) < 2:
            stats.skipped += 1
            continue
        fitted = fit_length(t, max_seq_len, policy)
        if fitted is None:
            stats.skipped += 1
            continue
        if fitted is not t:
            stats.truncated += 1
        stats.tokens += len(fitted.ids)
        stats.targets += fitted.n_targets
        out.append(fitted)
    if not out:
        raise MixloraError(
            f"no usable examples: all {stats.examples} were skipped (longer than max_seq_len={max_seq_len} "
            "or empty)"
        )
    return out, stats
