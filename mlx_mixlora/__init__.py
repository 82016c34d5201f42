"""mlx-mixlora: multi-skill LLMs on MLX.

Importing the package first loads OpenBLAS on Linux (see `cpu.blas`) so every MLX
CPU matmul that follows is fast, and keeps large freed buffers in glibc's heap
(see `cpu.heap`) so MLX reuses them without page faults; on macOS both are no-ops.
"""

from .cpu.blas import preload_openblas as _preload_openblas
from .cpu.heap import tune_malloc as _tune_malloc

_preload_openblas()
_tune_malloc()

__version__ = "0.1.0"

__all__ = ["__version__"]
