"""The paper's networks, created by name."""

from .complexity import Complexity, complexity, count_multiply_adds, count_params
from .registry import ARCHS, ArchSpec, build_model, get_spec, list_archs

__all__ = [
    "ARCHS",
    "ArchSpec",
    "Complexity",
    "build_model",
    "complexity",
    "count_multiply_adds",
    "count_params",
    "get_spec",
    "list_archs",
]
