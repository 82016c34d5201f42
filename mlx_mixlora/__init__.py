"""mlx-mixlora: multi-skill LLMs on MLX.

Importing the package first loads OpenBLAS on Linux (see `_blas`) so every MLX
CPU matmul that follows is fast, and keeps large freed buffers in glibc's heap
(see `_alloc`) so MLX reuses them without page faults; on macOS both are no-ops.
"""

from ._alloc import tune_malloc as _tune_malloc
from ._blas import preload_openblas as _preload_openblas

_preload_openblas()
_tune_malloc()

__version__ = "0.1.0"

__all__ = ["__version__"]
