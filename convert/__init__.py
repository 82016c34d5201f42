"""Format conversion: Hugging Face Llama checkpoints → MLX model directories.

Installed as `mlx_mixlora.convert` (the folder sits at the repo's top level).
"""

from .hf_to_mlx import ConvertOptions, convert_hf_to_mlx
from .hub import resolve_source

__all__ = ["ConvertOptions", "convert_hf_to_mlx", "resolve_source"]
