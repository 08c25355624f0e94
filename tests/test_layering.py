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
    loop = {m for m, _ in imports(PACKAGE / "train" / "loop.py")}
    assert "resnet_platform.tracking.worker_logger" in loop  # imported inside a function


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


def test_data_modules_import_each_other_without_a_circle():
    """checks -> skip_ledger <- shard_reader <- pipeline, and so on: each module can be read (and
    changed) knowing only the ones below it."""
    modules = {p.stem: p for p in sources("data") if p.stem != "__init__"}
    graph = {
        name: {m.rsplit(".", 1)[-1] for m, _ in imports(path) if m.startswith("resnet_platform.data.")}
        & set(modules)
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node] - {node}):
            assert state.get(nxt) != 1, "import circle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
