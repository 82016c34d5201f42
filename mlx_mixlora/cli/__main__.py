"""`python -m mlx_mixlora.cli` = `mixlora` (for subprocesses and launchers)."""

from . import run

run()
