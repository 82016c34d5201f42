"""Where mlx-mixlora keeps what it builds once (the nano base, converted models, the GEMV shim).

No mlx import here: `_blas` uses it before mlx.core is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MIXLORA_CACHE"


def cache_root() -> Path:
    """$MIXLORA_CACHE, else $XDG_CACHE_HOME/mlx-mixlora, else ~/.cache/mlx-mixlora."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mlx-mixlora"
