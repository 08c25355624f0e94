"""infra/local/start-cluster.sh and stop-cluster.sh never delete a folder they did not create.

A start that fails on a busy port (nothing is started: the ports are checked first) must leave a
``LOCAL_CLUSTER_STATE`` folder it was given as it was. Non-default LOCAL_* ports throughout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from fixtures.ports import free_port

LOCAL = Path(__file__).resolve().parents[1] / "infra" / "local"
BIN = Path(sys.executable).parent


def _env(state: Path, busy_port: int) -> dict[str, str]:
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        LOCAL_CLUSTER_STATE=str(state),
        LOCAL_RAY_PORT=str(busy_port),
        LOCAL_DASHBOARD_PORT=str(free_port()),
        LOCAL_S3_PORT=str(free_port()),
        LOCAL_MLFLOW_PORT=str(free_port()),
        LOCAL_STOP_GRACE="2",
    )
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(k, None)
    return env


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL / script)], env=env, capture_output=True, text=True, timeout=120)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_start_on_a_busy_port_keeps_an_existing_state_folder(tmp_path):
    state = tmp_path / "my-folder"
    (state / "notes").mkdir(parents=True)
    (state / "precious.txt").write_text("not the cluster's\n")
    (state / "notes" / "todo.md").write_text("- keep me\n")
    (state / "mlflow.db").write_bytes(b"someone else's database")
    before = _tree(state)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = _env(state, busy.getsockname()[1])
        started = _run("start-cluster.sh", env)
        assert started.returncode != 0 and "was not created by start-cluster.sh" in started.stderr, (
            started.stderr
        )
        assert _tree(state) == before  # not one file touched

        stopped = _run("stop-cluster.sh", env)  # pointed at it by hand: refuses too
        assert stopped.returncode != 0 and "nothing stopped or deleted" in stopped.stderr
        assert _tree(state) == before


def test_failed_start_keeps_an_empty_folder_it_was_given_and_cleans_only_its_files(tmp_path):
    state = tmp_path / "empty-folder"
    state.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = _env(state, busy.getsockname()[1])
        started = _run("start-cluster.sh", env)
        assert started.returncode != 0 and "is in use" in started.stderr, started.stderr
        assert state.is_dir()  # a folder it did not create survives its failed start
        (state / "added-later.txt").write_text("mine\n")
        stopped = _run("stop-cluster.sh", env)
        assert stopped.returncode == 0, stopped.stderr
        assert state.is_dir() and sorted(p.name for p in state.iterdir()) == ["added-later.txt"]


def test_a_folder_start_created_is_removed_by_stop(tmp_path):
    state = tmp_path / "new-state"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = _env(state, busy.getsockname()[1])
        assert _run("start-cluster.sh", env).returncode != 0
        assert (state / "logs").is_dir()  # logs of the failed start are kept
        assert _run("stop-cluster.sh", env).returncode == 0
        assert not state.exists()
