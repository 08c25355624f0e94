"""Driver side: open, find and close MLflow runs without holding an "active run" in the process.

The driver creates the run and hands its id to the Ray Train workers (rank 0 logs with
:class:`~resnet_platform.tracking.worker_logger.RunLogger`). Everything goes through an explicit
``MlflowClient(tracking_uri)``; nothing global (``mlflow.set_tracking_uri``, active runs) is touched.
Each lifecycle call runs under MLflow HTTP deadlines (:mod:`.limits`; a caller's own scope wins),
so a server that is down costs seconds, not minutes of MLflow's default retries.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from .limits import bounded_mlflow_http
from .params import MAX_TAG_VALUE_LENGTH, flatten_params, redact, sanitize_key, to_str

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "resnet-imagenet"
_BATCH = 100  # MLflow's limit on params + tags per log_batch


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db``.

    Relative SQLite paths and plain folders are made absolute, so the URI means the same file in a
    Ray worker whose working directory differs from the driver's: resolve on the driver, pass the
    result to the workers.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:":
            uri = "sqlite:///" + str(Path(path).resolve())
    elif "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        uri = Path(uri).resolve().as_uri()
    return uri


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_location_for(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store (``<its folder>/mlartifacts``).

    MLflow's own default for a database store is ``./mlruns`` in the working directory, which
    scatters artifacts wherever a job happens to start (``make demo`` left them outside
    ``demo-output/``). Servers and file stores keep their own defaults (None)."""
    if not tracking_uri.startswith("sqlite:////"):  # resolve_tracking_uri makes SQLite paths absolute
        return None
    return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location_for(client.tracking_uri))
    except MlflowException:  # another process created it between the two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@bounded_mlflow_http()
def ensure_experiment(tracking_uri: str | None, experiment: str) -> str:
    """Create the store and ``experiment`` now, before trials that log into them start together
    (several processes creating a new SQLite store at once race on its schema migration: "table ...
    already exists"); a server that does not answer fails here, before any trial starts. Returns the
    resolved URI."""
    uri = resolve_tracking_uri(tracking_uri)
    get_or_create_experiment(client_for(uri), experiment)
    return uri


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit checked out at ``path`` (default: the working directory), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def default_tags() -> dict[str, str]:
    """Tags every run gets when known: the git commit and the Ray job id."""
    tags: dict[str, str] = {}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    job_id = os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_SUBMISSION_ID")
    if job_id:
        tags["ray.job_id"] = job_id
    return tags


def _log_params_and_tags(
    client: MlflowClient, run_id: str, params: Mapping[str, str], tags: Mapping[str, str]
) -> None:
    existing = client.get_run(run_id).data.params
    new_params = []
    for k, v in params.items():
        if k in existing:
            if existing[k] != v:  # MLflow params are immutable: keep the first value, say so
                log.warning("param %s already logged as %r; not changing it to %r", k, existing[k], v)
            continue
        new_params.append(Param(k, v))
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(new_params), _BATCH):
        client.log_batch(run_id, params=new_params[i : i + _BATCH])
    for i in range(0, len(tag_list), _BATCH):
        client.log_batch(run_id, tags=tag_list[i : i + _BATCH])


@bounded_mlflow_http()
def start_run(
    tracking_uri: str | None,
    experiment: str,
    run_name: str,
    params: Mapping | object = None,
    tags: Mapping | None = None,
    *,
    existing_run_id: str | None = None,
) -> str:
    """Create a run (or reopen ``existing_run_id`` for a resume) and log its params and tags.

    ``params`` may be any nested config (dicts, lists, dataclasses); it is redacted and flattened
    (``"train.lr": "0.1"``). Tags are redacted and stringified; :func:`default_tags` are added.
    Returns the run id. The run stays RUNNING until :func:`end_run`.
    """
    client = client_for(tracking_uri)
    flat_params = flatten_params(redact(params or {}))
    all_tags = {**default_tags(), **{str(k): v for k, v in (tags or {}).items()}}
    flat_tags = {
        sanitize_key(k): to_str(v, MAX_TAG_VALUE_LENGTH) for k, v in redact(all_tags).items() if v is not None
    }
    if existing_run_id:
        run = client.get_run(existing_run_id)
        if run.info.status != "RUNNING":
            client.update_run(existing_run_id, status="RUNNING")
        run_id = existing_run_id
        log.info("resuming MLflow run %s (%s)", run_id, run.info.run_name)
    else:
        experiment_id = get_or_create_experiment(client, experiment)
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        log.info("created MLflow run %s (%s) in experiment %s", run_id, run_name, experiment)
    _log_params_and_tags(client, run_id, flat_params, flat_tags)
    return run_id


@bounded_mlflow_http()
def end_run(tracking_uri: str | None, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED (or FAILED / KILLED)."""
    RunStatus.from_string(status)  # raises on a typo
    client_for(tracking_uri).set_terminated(run_id, status=status)


@bounded_mlflow_http()
def find_run(tracking_uri: str | None, experiment: str, run_name: str) -> str | None:
    """The id of the most recent run named ``run_name`` in ``experiment``, or None."""
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    escaped = run_name.replace("\\", "\\\\").replace("'", "\\'")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"attributes.run_name = '{escaped}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
