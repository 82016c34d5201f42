"""The offline nano base: a BPE tokenizer and a small Llama pretrained on synthetic text."""

from ..cache import CACHE_ENV, cache_root
from .build import SOURCE, build_nano_base, ensure_nano_base, is_complete
from .probe import copy_probe
from .recipe import NanoRecipe, cached_path

__all__ = [
    "CACHE_ENV",
    "SOURCE",
    "NanoRecipe",
    "build_nano_base",
    "cache_root",
    "cached_path",
    "copy_probe",
    "ensure_nano_base",
    "is_complete",
]
