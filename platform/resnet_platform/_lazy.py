"""Package exports that import their submodule on first use (PEP 562).

Why: a Ray worker that only needs ``tracking.limits`` or ``data.manifest`` would otherwise import
MLflow, matplotlib and torch through the package's ``__init__`` (measured: importing
``train.loop`` pulled in MLflow and matplotlib, ~40% of its import time). Every training worker and
every Ray Data task process pays that once per run, so the package namespaces stay lazy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``exports`` maps a public name to the submodule (relative, e.g. ``".registry"``) that defines
    it. Returns the module's ``__getattr__`` and ``__dir__``."""

    def __getattr__(name: str):
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module, package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
