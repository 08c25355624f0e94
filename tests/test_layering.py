"""Who may import what, read from the source (no imports run): ``tracking/`` stays below ``train/``,
``tune/`` and ``paper/``, which open and close MLflow runs only through it; every job runs from a
bare checkout through ``jobs/_bootstrap.py``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "platform" / "resnet_platform"
ABOVE_TRACKING = ("train", "tune", "paper")
# MLflow run lifecycle calls that belong to tracking/ (its typed interface wraps them).
LIFECYCLE_NAMES = {"start_run", "end_run", "find_run", "client_for", "MlflowClient"}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) for every import in ``path``, function-level ones too."""
    package = ".".join(path.relative_to(REPO / "platform").with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [alias.name for alias in node.names]
            found.append((module, names))
            found += [(f"{module}.{name}", []) for name in names]  # "from . import x" imports a module
    return found


def sources(subpackage: str) -> list[Path]:
    paths = sorted((PACKAGE / subpackage).rglob("*.py"))
    assert paths, subpackage
    return paths


def test_tracking_imports_nothing_from_train_tune_or_paper():
    above = tuple(f"resnet_platform.{p}" for p in ABOVE_TRACKING)
    wrong = [
        f"{path.relative_to(REPO)}: {module}"
        for path in sources("tracking")
        for module, _ in imports(path)
        if module in above or module.startswith(tuple(f"{a}." for a in above))
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("subpackage", ABOVE_TRACKING)
def test_train_tune_and_paper_reach_mlflow_only_through_tracking(subpackage):
    wrong = [
        f"{path.relative_to(REPO)}: {module} {names or ''}"
        for path in sources(subpackage)
        for module, names in imports(path)
        if module.split(".")[0] == "mlflow" or LIFECYCLE_NAMES & set(names)
    ]
    assert not wrong, wrong


def test_the_import_walk_sees_relative_and_function_level_imports():
    """The checks above would pass vacuously if the walk missed imports: it must resolve these."""
    probe = PACKAGE / "tracking" / "runs.py"
    found = {m for m, _ in imports(probe)}
    assert {"mlflow", "resnet_platform.tracking.limits", "resnet_platform.tracking.params"} <= found
    run = {m for m, _ in imports(PACKAGE / "train" / "worker_run.py")}
    assert "resnet_platform.tracking.worker_logger" in run  # imported inside a function


JOBS = sorted(p for p in (REPO / "jobs").glob("*.py") if p.name != "_bootstrap.py")


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_every_job_imports_bootstrap_before_the_package(job):
    body = ast.parse(job.read_text()).body
    order = [
        alias.name if isinstance(node, ast.Import) else (node.module or "")
        for node in body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [node])
    ]
    assert "_bootstrap" in order, f"{job.name} does not import _bootstrap"
    # Imports inside functions run after the module's own, so only the top level can come too early.
    first_package = next((i for i, m in enumerate(order) if m.startswith("resnet_platform")), len(order))
    assert order.index("_bootstrap") < first_package


def test_bootstrap_makes_the_checkout_importable_without_an_install():
    """``python -S``: no site-packages, so no installed or editable copy of the package."""
    code = "import sys; sys.path.insert(0, 'jobs'); import _bootstrap, resnet_platform; print(resnet_platform.__file__)"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == (PACKAGE / "__init__.py").resolve()


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that imports the package from the checkout; must succeed."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "platform")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out


# What a Ray Train worker, a Ray Data task and a Tune trial's trainer import before tracking is asked for.
WORKER_MODULES = (
    "resnet_platform.train.loop",
    "resnet_platform.train.runner",
    "resnet_platform.train.main",
    "resnet_platform.data.pipeline",
    "resnet_platform.tune.trials",
)


@pytest.mark.slow  # a fresh interpreter importing torch and Ray: ~10 s on 2 busy cores
def test_workers_do_not_import_mlflow_or_matplotlib():
    """The namespaces are lazy (``_lazy.py``) and the lifecycles are imported by tracked runs only: a
    worker that does not log pays for neither MLflow nor matplotlib. In a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for m in {WORKER_MODULES!r}: importlib.import_module(m)\n"
        "print(sorted({k.split('.')[0] for k in sys.modules} & {'mlflow', 'matplotlib'}))"
    )
    out = _run_fresh(code)
    assert out.stdout.strip() == "[]"


# The modules whose functions Ray Data pickles into its read and map tasks (and so into its split
# coordinators and dataset managers, which unpickle them and never call them).
DATA_TASK_MODULES = (
    "resnet_platform.data.pipeline",
    "resnet_platform.data.shard_reader",
    "resnet_platform.data.cifar",
    "resnet_platform.data.digits",
)


def test_the_pipelines_task_modules_import_torch_only_when_a_function_runs():
    """``data/transforms.py`` and ``data/augment.py`` import torch inside their functions, so a
    process that only unpickles the pipeline's functions maps no libtorch (about 490 MB and seconds
    of start-up per Ray Data coordinator). Then the same interpreter decodes one image: torch arrives."""
    code = (
        "import importlib, io, sys\n"
        f"for m in {DATA_TASK_MODULES!r}: importlib.import_module(m)\n"
        "before = 'torch' in sys.modules\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from resnet_platform.data.pipeline import TransformConfig, transform_image\n"
        "buf = io.BytesIO(); Image.new('RGB', (40, 30), (200, 10, 10)).save(buf, format='JPEG')\n"
        "out = transform_image(buf.getvalue(), TransformConfig(image_size=16), True, np.random.default_rng(0))\n"
        "print(before, 'torch' in sys.modules, out.shape)"
    )
    out = _run_fresh(code)
    assert out.stdout.strip() == "False True (16, 16, 3)"


def _module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO / "platform").with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any level (function-level too). ``from P import
    x`` is an edge to ``P.x`` when that is a module, else to ``P`` (where ``x`` is defined)."""
    modules = _module_names()

    def owner(name: str) -> str | None:  # the module that ``name`` names or lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names
                ]
            else:
                continue
            edges |= {t for t in map(owner, targets) if t and t != name}
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_inside_the_package():
    """A circle hidden by an import inside a function is still a circle: modules that need each
    other are one module, or a third holds what they share."""
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_a_function_level_circle():
    graph = import_graph()
    assert "resnet_platform.train.presets" in graph["resnet_platform.train.config"]
    assert "resnet_platform.train.techniques" in graph["resnet_platform.train.config"]  # inside a method
    probe = {**graph, "resnet_platform.train.presets": {"resnet_platform.train.config"}}
    assert ["resnet_platform.train.config", "resnet_platform.train.presets"] in import_cycles(probe)


MAX_FUNCTION_LINES = 80
# Over the limit and not yet split; each entry is a debt with an owner, not a permission.
KNOWN_LONG_FUNCTIONS: set[str] = set()


def test_functions_stay_short_or_say_why():
    """A function over 80 lines is a module's worth of jobs: split it, or say in its docstring why
    it is one piece ("Long because ...")."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            where = f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"
            if lines > MAX_FUNCTION_LINES and where not in KNOWN_LONG_FUNCTIONS:
                if "long because" not in (ast.get_docstring(node) or "").lower():
                    long.append(f"{where} ({lines} lines)")
    assert not long, long
