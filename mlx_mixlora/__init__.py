"""mlx-mixlora: multi-skill LLMs on MLX.

Importing the package first loads OpenBLAS on Linux (see `_blas`) so every MLX
CPU matmul that follows is fast; on macOS this is a no-op.
"""

from ._blas import preload_openblas as _preload_openblas

_preload_openblas()

__version__ = "0.1.0"

__all__ = ["__version__"]
