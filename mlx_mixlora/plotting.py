"""The package's one matplotlib set-up: headless pyplot and atomic figure files.

Every figure the package draws (demo heatmap and retention, routing accuracy and
weights, bench ratios, training curves) goes through these two, so the backend,
the missing-matplotlib error and the write-then-rename are decided once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import MixloraError
from .io import atomic_file


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display needed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MixloraError("plots need matplotlib: pip install 'mlx-mixlora[plots]'") from None
    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out `fig`, write it to `path` atomically (format from the suffix, else PNG), close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_file(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path
