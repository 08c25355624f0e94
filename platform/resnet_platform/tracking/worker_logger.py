"""Rank 0's logger inside Ray Train workers: batched step metrics, once-only epoch metrics, artifacts.

A worker group restarted after a failure creates a new :class:`RunLogger` on the same run. On init
it reads what the run already holds (the last ``epoch`` and the last step of any metric), so the
replayed part of training logs nothing twice: ``log_epoch`` refuses an epoch already logged and
``log_step`` drops steps at or before the last step already stored.

Logging never stops training. Every MLflow call runs under :class:`TrackingLimits` (seconds, not
MLflow's minutes of retries). Metrics that could not be sent stay in a bounded buffer and go out,
in order, at the first call after the server answers again (tried at most every
``retry_interval_s``); one warning says when an outage starts, one line when it ends, and one
when the logger closes with metrics it could not deliver. Artifacts are not buffered: a failed
upload is one warning.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from resnet_platform._compat import latest_metrics

from .limits import TrackingLimits, bounded_mlflow_http, is_outage
from .params import redact, redact_text, sanitize_key, secret_values
from .runs import client_for, resolve_tracking_uri

log = logging.getLogger(__name__)

EPOCH_METRIC = "epoch"
_MAX_METRICS_PER_BATCH = 1000
_TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".txt", ".md", ".toml", ".cfg", ".ini", ".csv", ".log", ".py"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _jsonable(obj: Any) -> Any:
    """dataclasses, paths, tensors, numpy scalars -> JSON types (via ``redact``'s dict conversion)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except Exception:
            pass
    return str(obj)


@dataclass
class _Batch:
    """Metric points waiting to be sent; ``epoch`` is set for an epoch's batch (kept over steps)."""

    metrics: list[Metric]
    epoch: int | None = None


class RunLogger:
    """Log to an existing MLflow run from one process (rank 0), without an in-process active run.

    ``flush_every`` step points are buffered and sent in one ``log_batch`` (also every
    ``flush_seconds``, at each ``log_epoch`` and at ``close``), so per-step logging costs a dict
    append. Use as a context manager or call :meth:`close` to flush the tail.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        run_id: str,
        *,
        flush_every: int = 200,
        flush_seconds: float = 15.0,
        limits: TrackingLimits | None = None,
        restarted: bool = True,
    ):
        # ``restarted``: this logger may follow an earlier incarnation of the worker group, so what
        # the run already holds is worth a line; the driver's own logger after the fit passes False
        # (the run holding every epoch is then the normal case, not news).
        self._announce_history = restarted
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.run_id = run_id
        self.limits = limits or TrackingLimits()
        self.client = client_for(self.tracking_uri)
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._buffer: list[Metric] = []
        self._pending: list[_Batch] = []
        self._last_flush = time.monotonic()
        self._system_monitor = None
        self._down_since: float | None = None  # monotonic time the current outage began
        self._next_try = 0.0
        self._dropped = 0  # points dropped in the current outage (buffer full)
        self.undelivered = 0  # points given up on at close
        # MLflow's HTTP limits hold for this logger's lifetime (its sampler thread included).
        self._scope = bounded_mlflow_http(self.limits)
        self._scope.__enter__()
        self.last_epoch: int | None = None
        self.last_step: int | None = None
        self.resume_step: int | None = None
        self._history_known = False
        try:
            self._load_history()
        except Exception as e:
            if not is_outage(e):
                self._scope.__exit__(None, None, None)
                raise
            self._outage(e)

    def _load_history(self) -> None:
        """What the run already holds (after a restart): its last epoch and last step."""
        run = self.client.get_run(self.run_id)
        history = self.client.get_metric_history(self.run_id, EPOCH_METRIC)
        stored_epoch = int(max(m.value for m in history)) if history else None
        # The latest value of each metric is the one at its highest step: the run's last step.
        steps = [m.step for m in latest_metrics(run)]
        stored_step = max(steps) if steps else None
        # Steps at or before this were stored by an earlier incarnation of the worker group.
        self.resume_step = stored_step
        if self._announce_history and (stored_epoch is not None or stored_step is not None):
            log.info(
                "MLflow run %s already holds epoch %s, step %s: not logging them again",
                self.run_id,
                stored_epoch,
                stored_step,
            )
        if self._pending:  # logged while the history was unknown: drop what the run already has
            self._pending = [
                b
                for b in self._pending
                if (b.epoch is None or stored_epoch is None or b.epoch > stored_epoch)
                and (
                    b.epoch is not None
                    or stored_step is None
                    or (b.metrics and b.metrics[0].step > stored_step)
                )
            ]
        self.last_epoch = _max(self.last_epoch, stored_epoch)
        self.last_step = _max(self.last_step, stored_step)
        self._history_known = True

    # -- metrics -------------------------------------------------------------------------------
    @staticmethod
    def _metrics(metrics: Mapping[str, Any], step: int, ts: int) -> list[Metric]:
        out = []
        for k, v in metrics.items():
            if v is None:
                continue
            try:
                value = float(v.item() if hasattr(v, "item") else v)
            except (TypeError, ValueError):
                log.warning("metric %s=%r is not a number; skipped", k, v)
                continue
            if math.isnan(value):
                continue
            out.append(Metric(sanitize_key(k), value, ts, int(step)))
        return out

    def log_step(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer per-step metrics (loss, lr, images/s); dropped if ``step`` was logged before a restart."""
        if self.resume_step is not None and step <= self.resume_step:
            return
        self._buffer += self._metrics(metrics, step, _now_ms())
        self.last_step = _max(self.last_step, step)
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def log_epoch(self, epoch: int, metrics: Mapping[str, float], step: int) -> bool:
        """Log epoch metrics and ``epoch`` at ``step``; False (and nothing logged) if already logged.

        True means accepted: sent, or buffered until the server answers again."""
        if self.last_epoch is not None and epoch <= self.last_epoch:
            log.info(
                "epoch %d already logged to run %s (last %d); skipped", epoch, self.run_id, self.last_epoch
            )
            return False
        self.flush(send=False)
        ts = _now_ms()
        batch = self._metrics(metrics, step, ts) + [Metric(EPOCH_METRIC, float(epoch), ts, int(step))]
        self._pending.append(_Batch(batch, epoch))
        self.last_epoch = epoch
        self.last_step = _max(self.last_step, step)
        self._drain()
        return True

    def log_event(self, metrics: Mapping[str, float], step: int) -> None:
        """Metrics that mark an event of this incarnation (e.g. the worker count at a group start):
        sent even at a step an earlier incarnation already logged, with the usual outage buffering."""
        points = self._metrics(metrics, step, _now_ms())
        if points:
            self._pending.append(_Batch(points))
            self._trim()
            self._drain()

    def flush(self, send: bool = True) -> None:
        buffer, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        if buffer:
            self._pending.append(_Batch(buffer))
            self._trim()
        if send:
            self._drain()

    @property
    def pending_points(self) -> int:
        return sum(len(b.metrics) for b in self._pending) + len(self._buffer)

    def _trim(self) -> None:
        """Keep the buffer bounded: the oldest step batches go first, epoch batches last."""
        while self.pending_points > self.limits.max_buffered and len(self._pending) > 1:
            steps = [i for i, b in enumerate(self._pending) if b.epoch is None]
            victim = self._pending.pop(steps[0] if steps else 0)
            if self._dropped == 0:
                log.warning(
                    "MLflow run %s: more than %d metric points waiting for the server; dropping the "
                    "oldest (epoch metrics are kept in every checkpoint's history)",
                    self.run_id,
                    self.limits.max_buffered,
                )
            self._dropped += len(victim.metrics)

    def _drain(self, force: bool = False) -> None:
        """Send what is pending, oldest first. During an outage, try only every retry interval."""
        if not self._pending:
            return
        if self._down_since is not None and not force and time.monotonic() < self._next_try:
            return
        sent = 0
        try:
            if not self._history_known:
                self._load_history()
            while self._pending:
                batch = self._pending[0]
                try:
                    for i in range(0, len(batch.metrics), _MAX_METRICS_PER_BATCH):
                        self.client.log_batch(
                            self.run_id,
                            metrics=batch.metrics[i : i + _MAX_METRICS_PER_BATCH],
                            synchronous=True,
                        )
                except Exception as e:
                    if is_outage(e):
                        raise
                    log.warning("MLflow refused %d metric points (%s); dropped", len(batch.metrics), e)
                sent += len(batch.metrics)
                self._pending.pop(0)
        except Exception as e:
            if not is_outage(e):
                raise
            self._outage(e)
            return
        if self._down_since is not None:
            log.warning(
                "MLflow at %s answers again after %.0f s: sent %d buffered metric points%s",
                self.tracking_uri,
                time.monotonic() - self._down_since,
                sent,
                f" ({self._dropped} dropped while it was down)" if self._dropped else "",
            )
            self._down_since, self._dropped = None, 0
            self._revive_system_metrics()

    def _outage(self, error: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "MLflow at %s is not answering (%s): training goes on; metrics are buffered and "
                "sent when it returns (retried every %.0f s)",
                self.tracking_uri,
                _one_line(error),
                self.limits.retry_interval_s,
            )
        self._next_try = now + self.limits.retry_interval_s

    def _guard(self, what: str, fn, *args) -> bool:
        """Run one artifact call; an outage or refusal becomes one warning, never an exception."""
        try:
            fn(*args)
            return True
        except Exception as e:
            if not is_outage(e) and not isinstance(e, OSError):
                raise
            log.warning("MLflow run %s: could not log %s (%s)", self.run_id, what, _one_line(e))
            return False

    # -- artifacts -----------------------------------------------------------------------------
    def log_artifact_file(self, local_path: str | Path, artifact_path: str | None = None) -> bool:
        """Upload a file; small text files are scrubbed of credentials first (JSON by key as well).

        Artifact calls return False (after one warning) when MLflow cannot take them."""
        local_path = Path(local_path)
        if local_path.suffix.lower() in _TEXT_SUFFIXES and local_path.stat().st_size < 20_000_000:
            try:
                text = local_path.read_text()
            except UnicodeDecodeError:
                text = None
            if text is not None:
                clean = redact_text(text, secret_values())
                if local_path.suffix.lower() == ".json":
                    try:
                        clean = json.dumps(redact(json.loads(clean)), indent=2, sort_keys=False)
                    except (ValueError, TypeError):
                        pass
                if clean != text:
                    with tempfile.TemporaryDirectory() as tmp:
                        copy = Path(tmp) / local_path.name
                        copy.write_text(clean)
                        return self._guard(
                            local_path.name, self.client.log_artifact, self.run_id, str(copy), artifact_path
                        )
        return self._guard(
            local_path.name, self.client.log_artifact, self.run_id, str(local_path), artifact_path
        )

    def log_dict(self, d: Mapping | Any, name: str) -> bool:
        """A (redacted) dict or dataclass as ``name`` (``.json`` or ``.yaml``) in the run's artifacts."""
        return self._guard(name, self.client.log_dict, self.run_id, _jsonable(redact(d)), name)

    def log_text(self, text: str, name: str) -> bool:
        return self._guard(name, self.client.log_text, self.run_id, redact_text(text), name)

    def log_figure(self, fig_or_png_path: Any, name: str) -> bool:
        """A matplotlib figure or an existing image file, stored as ``name`` (e.g. ``curves/error.png``)."""
        if isinstance(fig_or_png_path, str | Path):
            src = Path(fig_or_png_path)
            target = Path(name)
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / target.name
                shutil.copyfile(src, copy)
                parent = str(target.parent) if str(target.parent) not in ("", ".") else None
                return self._guard(name, self.client.log_artifact, self.run_id, str(copy), parent)
        return self._guard(name, self.client.log_figure, self.run_id, fig_or_png_path, name)

    # -- system metrics ------------------------------------------------------------------------
    def start_system_metrics(self, sampling_interval: float = 10.0, node_id: str | None = None) -> bool:
        """MLflow's CPU/memory/GPU monitor on this run (needs ``psutil``; GPUs need ``nvidia-ml-py``)."""
        try:
            import psutil  # noqa: F401
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            log.warning("psutil is not installed: MLflow system metrics are not logged")
            return False
        self._system_args = (sampling_interval, node_id)
        self._system_monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=sampling_interval,
            resume_logging=True,
            node_id=node_id,
            tracking_uri=self.tracking_uri,
        )
        self._system_monitor.start()
        return True

    def _revive_system_metrics(self) -> None:
        """MLflow's sampler thread ends at its first failed call: start it again after an outage."""
        monitor = self._system_monitor
        thread = getattr(monitor, "_process", None)
        if monitor is None or thread is None or thread.is_alive():
            return
        self._system_monitor = None
        try:
            monitor.finish()
            self.start_system_metrics(*self._system_args)
        except Exception as e:
            log.warning("MLflow system metrics not restarted: %s", _one_line(e))

    def close(self) -> None:
        """Flush (one more try even mid-outage), stop the sampler, and say once what was lost."""
        try:
            self.flush(send=False)
            self._drain(force=True)
            if self._pending:
                epochs = [b.epoch for b in self._pending if b.epoch is not None]
                self.undelivered = self.pending_points
                log.warning(
                    "MLflow run %s: %d metric points%s could not be sent (server at %s down since "
                    "%.0f s ago); the epochs' metrics remain in the checkpoints' history",
                    self.run_id,
                    self.undelivered,
                    f" (epochs {', '.join(map(str, epochs))})" if epochs else "",
                    self.tracking_uri,
                    time.monotonic() - (self._down_since or time.monotonic()),
                )
                self._pending = []
            if self._system_monitor is not None:
                monitor, self._system_monitor = self._system_monitor, None
                try:
                    monitor.finish()
                except Exception as e:  # MLflow logs its own errors here; never fail the close
                    log.warning("MLflow system metrics did not stop cleanly: %s", _one_line(e))
        finally:
            if self._scope is not None:
                scope, self._scope = self._scope, None
                scope.__exit__(None, None, None)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) < 240 else text[:237] + "..."
