"""Shared fixtures: real servers on 127.0.0.1, each in its own module under tests/fixtures/."""

import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Ray Train's controller polls its workers every 2 s; a run's end waits for the next poll. The
# suite's ~50 short runs poll every 0.5 s (Ray Train passes the variable to its controller).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = [
    "fixtures.s3",
    "fixtures.ray_local",
    "fixtures.mlflow_server",
    "fixtures.datasets",
    "fixtures.registered_model",
]
