"""Shared fixtures: real servers on 127.0.0.1, each in its own module under tests/fixtures/."""

import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = [
    "fixtures.s3",
    "fixtures.ray_local",
    "fixtures.mlflow_server",
    "fixtures.datasets",
    "fixtures.registered_model",
]
