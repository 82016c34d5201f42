"""Find a checkpoint: a local directory, or a Hugging Face hub id downloaded once.

Only safetensors, JSON configs and tokenizer files are fetched, never pickles.
Offline, the error is one line naming the repo id and the network problem.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import MixloraError

HUB_ALLOW_PATTERNS = [
    "*.safetensors",
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "*.txt",
    "*.jinja",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _root_cause(exc: BaseException) -> BaseException:
    """Follow __cause__/__context__ to the innermost exception (the network error)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    # huggingface-hub puts the underlying network error on its first line as "Got: ..."
    if first.startswith("Got: "):
        return first[5:]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def resolve_source(src: str, revision: str | None = None) -> Path:
    """Return a local directory for `src` (a path, or a hub id to download)."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise MixloraError(f"{src} is a file; give the checkpoint directory")
        return path
    if not _HUB_ID.match(src):
        raise MixloraError(f"checkpoint directory not found: {src}")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(src, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS)
    except Exception as e:  # hub errors come in many types; users need one line
        cause = _one_line(_root_cause(e)) if _root_cause(e) is not e else _one_line(e)
        raise MixloraError(f"could not download {src} from the Hugging Face hub: {cause}") from None
    return Path(local)
