"""infra/docker/Dockerfile, statically (no Docker engine here): base image, pins, install steps."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        current = ""
    return out


def _pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(rf"{name}==(\S+)", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned in constraints.txt")


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def test_from_the_ray_gpu_image_of_the_pinned_version(steps):
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "rayproject/ray"
    tag, _, digest = tag.partition("@")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"base image not pinned by digest: {froms[0]}"
    assert tag.startswith(_pinned("ray") + "-"), tag
    python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python == ">=3.11" and "-py311" in tag
    assert re.search(r"-(gpu|cu\d+)", tag), "training nodes need the CUDA base image"


def test_installs_dependencies_and_package_with_the_constraints(steps):
    copies = [args for word, args in steps if word == "COPY"]
    runs = [args for word, args in steps if word == "RUN"]
    assert any("constraints.txt" in c for c in copies)
    pip_runs = [r for r in runs if "pip install" in r]
    assert pip_runs and all("-c constraints.txt" in r for r in pip_runs)
    # The dependency layer comes before the source is copied, so code edits keep it cached.
    order = [word + " " + args for word, args in steps]
    deps = next(i for i, s in enumerate(order) if s.startswith("RUN") and "-r /tmp/requirements.txt" in s)
    source = next(i for i, s in enumerate(order) if s.startswith("COPY") and s.split()[-2:] == [".", "."])
    package = next(
        i for i, s in enumerate(order) if s.startswith("RUN") and "pip install --no-cache-dir . " in s
    )
    assert deps < source < package


def test_no_secrets_in_the_image(steps):
    text = DOCKERFILE.read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
    assert not [
        args
        for word, args in steps
        if word in {"ARG", "ENV"} and re.search("(?i)secret|token|password", args)
    ]


def test_dockerignore_keeps_the_context_small():
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "infra/local/.state"} <= ignored
    # What the image needs must not be ignored.
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "platform", "jobs"):
        assert needed not in ignored


def test_base_image_digest_has_a_documented_bump_script():
    text = DOCKERFILE.read_text()
    script = REPO / "infra" / "docker" / "pin-base-image.sh"
    assert "infra/docker/pin-base-image.sh" in text and script.is_file()
    body = script.read_text()
    # It rewrites exactly the FROM line the test above reads, with a digest it checked.
    assert "^FROM rayproject/ray:" in body and "sha256:[0-9a-f]{64}" in body


def test_ignore_files_cover_every_output_folder():
    """What the platform writes (runs, MLflow stores, demo and paper outputs, local cluster state)
    never goes into the image (`COPY . .`), `ray up` (rsync honours .gitignore) or git."""
    outputs = {
        "runs",
        "paper-results",
        "mlflow-server",
        "demo-output",
        "mlruns",
        "mlflow.db",
        "mlartifacts",
        "infra/local/.state",
    }
    for name in (".dockerignore", ".gitignore"):
        lines = {
            line.strip().strip("/")
            for line in (REPO / name).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
        assert outputs <= lines, f"{name} misses {sorted(outputs - lines)}"
