"""What a resubmitted command continues: the settings a run stores when it starts, and which of
them a resume may change.

A scheduler's retry, a cluster restart or a user pressing the up arrow submits the same command
again. With ``--resume auto`` (the default) the same ``--name`` at the same ``--storage`` then
continues the run from its latest stored checkpoint (Ray Train's ``get_checkpoint()``: the newest
reported, an epoch's or a ``--checkpoint-every-steps`` one), or starts it when there is none yet.
What must not happen is a *different* run continuing the stored one: the driver writes the run's
settings (redacted) to ``<storage>/<name>/run_settings.json`` when it starts a run, and a resume
whose settings differ, outside :data:`MAY_CHANGE_ON_RESUME`, is refused with one line naming them.
A run stored before this file existed is continued without the comparison.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from resnet_platform import storage
from resnet_platform.errors import UserError
from resnet_platform.tracking.params import redact

SETTINGS_FILE = "run_settings.json"

# Settings a resumed run may change, the one list: how long to train (extending a run), how many
# workers and where they and the data tasks run, failure budgets, checkpoint cadence and upload,
# timeouts, and where and how much it logs. Everything else (model, data, recipe, seed, ...)
# decides what is trained: a change there is a new run, under a new --name.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        # length and size of the run
        "epochs",
        "num_workers",
        "elastic_resize_interval_s",
        "cpus_per_worker",
        # where data tasks run and how far they read ahead; how long a worker waits for them
        "data_node_label",
        "data_node_resource",
        "prefetch_batches",
        "ingest_object_store_gib",
        "data_wait_s",
        "data_wait_between_s",
        "max_skipped_fraction",
        # recovery and checkpoints
        "resume",
        "max_failures",
        "max_preemptions",
        "preemption_check_steps",
        "checkpoint_upload",
        "checkpoint_every",
        "checkpoint_every_steps",
        "keep_checkpoints",
        # tracking and output
        "tracking_uri",
        "mlflow_timeout_s",
        "mlflow_retry_interval_s",
        "log_every_steps",
        "progress_every_s",
        "progress_every_steps",
        "register_as",
        # set by the driver or the tests, not the user
        "name",
        "storage",
        "mlflow_run_id",
        "fault",
        "trace_samples",
    }
)


class SettingsChangedError(UserError, ValueError):
    """A resume whose settings differ from the stored run's."""


def resolve(mode: bool | str, exists: bool, where: str, kind: str, error: type[Exception]) -> bool:
    """Whether ``kind`` at ``where`` is continued, by the rule of ``--resume`` (``mode``: auto, must,
    never, or a switch's True/False = must/never); ``error`` is raised when the mode forbids it."""
    mode = {True: "must", False: "never"}.get(mode, mode) if isinstance(mode, bool) else mode
    if mode == "never" and exists:
        raise error(
            f"{kind} {where} already exists: continue it with --resume (auto or must), or pass another --name"
        )
    if mode == "must" and not exists:
        raise error(f"--resume: no {kind} at {where} to continue")
    return exists


def _settings(values: dict[str, Any]) -> dict[str, Any]:
    """Comparable, storable values: redacted (credentials never reach storage), JSON types."""
    return json.loads(json.dumps(redact(values), default=str))


def store_settings(run_uri: str, values: dict[str, Any]) -> None:
    """Write the settings of a run being started (overwriting: a run that never stored a checkpoint
    is started afresh)."""
    fs, path = storage.resolve(run_uri)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SETTINGS_FILE}") as out:
        out.write(json.dumps(_settings(values), indent=1, sort_keys=True).encode())


def stored_settings(run_uri: str) -> dict[str, Any] | None:
    fs, path = storage.resolve(run_uri)
    target = f"{path}/{SETTINGS_FILE}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as f:
        return json.loads(f.read().decode())


def changed_settings(stored: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The settings of ``values`` that differ from ``stored``, outside :data:`MAY_CHANGE_ON_RESUME`
    (a setting the stored run did not have, from an older version, is not compared)."""
    new = _settings(values)
    return sorted(k for k in new if k not in MAY_CHANGE_ON_RESUME and k in stored and stored[k] != new[k])


def check_same_settings(run_uri: str, values: dict[str, Any]) -> None:
    """Refuse, in one line naming each difference, to continue the run at ``run_uri`` with settings
    that would make it another run."""
    stored = stored_settings(run_uri)
    if stored is None:
        return
    changed = changed_settings(stored, values)
    if changed:
        new = _settings(values)
        diffs = ", ".join(f"--{k.replace('_', '-')} {_show(stored[k])} -> {_show(new[k])}" for k in changed)
        raise SettingsChangedError(
            f"run {run_uri} was started with other settings ({diffs}): give the stored values to "
            "continue it, or another --name to start a new run"
        )


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
