"""Checkpoints off the critical path: rank 0's uploads run in the background, one at a time.

``ray.train.report(checkpoint_upload_mode=ASYNC)`` (Ray 2.60, ``report_config.py``) returns once the
ranks agree on the checkpoint's directory name; the copy to storage runs on the worker's one upload
thread, and Ray registers the checkpoint when it is done. On top of that, :class:`CheckpointUploader`

- keeps **at most one upload in flight**: before rank 0 reports a new checkpoint it waits for the
  previous one (Ray would queue them, with every local copy on disk meanwhile);
- **retries** the copy (``checkpoint.persist_with_retries``: the whole directory, with backoff,
  ``RESNET_PLATFORM_S3_MAX_ATTEMPTS`` times) and counts the attempts;
- **reports** a copy that still fails: one error line naming the checkpoint and its target, the
  error raised into the training thread by Ray and again by the next :meth:`wait`, so the group
  fails and restarts from the last checkpoint that did reach storage (``--max-failures``), or the run
  fails naming it. A checkpoint is never dropped silently;
- runs what must wait for the checkpoint to be stored (logging the upload's timings to MLflow) only
  after it is, from the training thread (:meth:`after_upload`, :meth:`poll`).

``sync`` mode keeps the old behaviour (every rank waits in ``report`` for the upload) with the same
retries, timings and callbacks, for comparison and for storage that cannot take a background copy.
Timings per report (``report_s``: time the loop spent in ``report``, waiting for the previous upload
included) and per upload (``checkpoint_upload_s``, attempts) come back to the loop as metrics.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CheckpointUploadError(RuntimeError):
    """A checkpoint could not be copied to storage after every retry."""


@dataclass
class Upload:
    name: str
    directory: str
    started_at: float | None = None  # wall time (time.time()) of the first attempt
    finished_at: float | None = None
    attempts: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    callbacks: list[Callable[[Upload], None]] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def stats(self) -> dict[str, float]:
        out = {"checkpoint_upload_attempts": float(self.attempts)}
        if self.seconds is not None:
            out["checkpoint_upload_s"] = self.seconds
            out["checkpoint_upload_started_at"] = self.started_at
            out["checkpoint_upload_finished_at"] = self.finished_at
        return out


class CheckpointUploader:
    """One per worker; only rank 0 passes checkpoints. ``mode``: ``async`` or ``sync``."""

    def __init__(self, mode: str, rank: int) -> None:
        if mode not in ("async", "sync"):
            raise ValueError(f"checkpoint upload mode must be async or sync, not {mode!r}")
        self.mode = mode
        self.rank = rank
        self.inflight: Upload | None = None
        self.uploads: list[Upload] = []  # every upload of this incarnation, oldest first
        self.stored_in_report: Upload | None = None  # sync mode: stored before report returned

    # -- the upload itself (Ray's upload thread in async mode, the training thread in sync mode) --
    def _upload_fn(self, upload: Upload):
        from .checkpoint import persist_with_retries

        def count() -> None:
            if upload.started_at is None:
                upload.started_at = time.time()
            upload.attempts += 1

        def fn(checkpoint, checkpoint_dir_name: str):
            try:
                return persist_with_retries(checkpoint, checkpoint_dir_name, on_attempt=count)
            except BaseException as e:
                # Final: our retries are done. Worded so that Ray's own retry of the upload (which
                # matches "AWS Error ..." in the message) does not start the whole series again.
                reason = " ".join(str(e).replace("AWS Error", "S3 error").split())[:300]
                upload.error = CheckpointUploadError(
                    f"checkpoint {checkpoint_dir_name} was not stored after {upload.attempts} attempts: {reason}"
                )
                log.error("%s; the run goes back to the last stored checkpoint", upload.error)
                shutil.rmtree(upload.directory, ignore_errors=True)
                raise upload.error from e
            finally:
                upload.finished_at = time.time()
                upload.done.set()

        return fn

    # -- the training thread ----------------------------------------------------------------------
    def report(self, metrics: dict[str, Any], directory: str | Path | None, name: str | None) -> float:
        """``ray.train.report`` on every rank (``directory``: rank 0's checkpoint, else None; ``name``:
        its directory name, the same on every rank). Returns the seconds spent here."""
        import ray.train
        from ray.train import CheckpointUploadMode

        start = time.perf_counter()
        checkpoint = None
        kwargs: dict[str, Any] = {}
        upload = None
        if directory is not None:
            self.wait()  # at most one upload in flight
            upload = Upload(name or Path(directory).name, str(directory))
            checkpoint = ray.train.Checkpoint.from_directory(str(directory))
            kwargs["checkpoint_upload_fn"] = self._upload_fn(upload)
        if self.mode == "async":
            kwargs["checkpoint_upload_mode"] = CheckpointUploadMode.ASYNC
            kwargs["delete_local_checkpoint_after_upload"] = directory is not None
        if upload is not None:
            self.inflight = upload
            self.uploads.append(upload)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name, **kwargs)
        if self.mode == "sync" and upload is not None:
            shutil.rmtree(upload.directory, ignore_errors=True)
            self.wait()
            self.stored_in_report = upload  # its timings reach the epoch's row (after_upload)
        return time.perf_counter() - start

    def after_upload(self, fn: Callable[[Upload | None], None]) -> None:
        """Run ``fn(upload)`` once the in-flight upload is stored (now, with None, if there is none).
        Never run for an upload that failed. In sync mode the upload is already stored: ``fn`` gets it."""
        if self.inflight is None:
            upload, self.stored_in_report = self.stored_in_report, None
            fn(upload)
        else:
            self.inflight.callbacks.append(fn)
            self.poll()

    def poll(self) -> None:
        """Cheap: if the in-flight upload finished, run its callbacks (or raise its error)."""
        if self.inflight is not None and self.inflight.done.is_set():
            self._settle()

    def wait(self) -> None:
        """Until the in-flight upload is finished; raises :class:`CheckpointUploadError` if it failed."""
        if self.inflight is not None:
            self.inflight.done.wait()
            self._settle()

    def finish_quietly(self) -> None:
        """On the way out of a failing loop: let the in-flight upload finish; its own failure was
        logged already and must not hide the error being raised."""
        try:
            self.wait()
        except CheckpointUploadError:
            pass

    def _settle(self) -> None:
        upload, self.inflight = self.inflight, None
        if upload.error is not None:
            raise CheckpointUploadError(str(upload.error)) from upload.error
        for fn in upload.callbacks:
            fn(upload)
        upload.callbacks.clear()
