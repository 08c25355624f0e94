"""Exact requirements for a logged model, read from the environment that logged it.

``mlflow models serve`` (virtualenv or conda manager) installs a model's ``requirements.txt`` from
the package index. Every line there is ``name==version`` of what is installed now, and
``constraints.txt`` pins the whole dependency tree below them the same way, so the serving
environment gets what was tested. This package is not among them: its code travels inside the
model (MLflow ``code_paths``), so nothing named ``resnet-platform`` is ever fetched from an index.
"""

from __future__ import annotations

import re
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# What the model's code imports when served: the pyfunc wrapper, tracking/ and models/.
SERVING_DISTRIBUTIONS = ("mlflow", "torch", "pillow", "numpy", "pandas", "matplotlib")


def installed_version(name: str) -> str:
    """The installed version without a local label (``2.14.1+cu130`` -> ``2.14.1``): local builds
    (PyTorch's CUDA wheels) are not on the public index under that name."""
    return re.sub(r"\+.*$", "", metadata.version(name))


def pinned_requirements(names: tuple[str, ...] = SERVING_DISTRIBUTIONS) -> list[str]:
    """``["mlflow==3.17.2", "torch==2.14.1", ...]`` for ``names``, from the installed versions."""
    return [f"{canonicalize_name(n)}=={installed_version(n)}" for n in names]


def pinned_closure(names: tuple[str, ...] = SERVING_DISTRIBUTIONS) -> list[str]:
    """Every installed distribution ``names`` depend on, transitively (their extras followed),
    as sorted ``name==version`` lines. Dependencies whose markers do not apply here, or that are not
    installed, are left out."""
    env = default_environment()
    seen: dict[str, str] = {}
    queue: list[tuple[str, frozenset[str]]] = [(n, frozenset()) for n in names]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while queue:
        name, extras = queue.pop()
        key = canonicalize_name(name)
        if (key, extras) in expanded:
            continue
        expanded.add((key, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = installed_version(name)
        for line in dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras)
            ):
                continue
            queue.append((req.name, frozenset(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(seen.items())]
