"""Rank 0's logger inside Ray Train workers: batched step metrics, once-only epoch metrics, artifacts.

A worker group restarted after a failure creates a new :class:`RunLogger` on the same run. On init
it reads what the run already holds (the last ``epoch`` and the last step of any metric), so the
replayed part of training logs nothing twice: ``log_epoch`` refuses an epoch already logged and
``log_step`` drops steps at or before the last step already stored.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

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
    ):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.run_id = run_id
        self.client = client_for(self.tracking_uri)
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._system_monitor = None
        run = self.client.get_run(run_id)
        history = self.client.get_metric_history(run_id, EPOCH_METRIC)
        self.last_epoch: int | None = int(max(m.value for m in history)) if history else None
        # The latest value of each metric is the one at its highest step: the run's last step.
        latest = getattr(run.data, "_metric_objs", None) or []
        steps = [m.step for m in latest]
        self.last_step: int | None = max(steps) if steps else None
        # Steps at or before this were stored by an earlier incarnation of the worker group.
        self.resume_step: int | None = self.last_step
        if self.last_epoch is not None or self.last_step is not None:
            log.info(
                "MLflow run %s already holds epoch %s, step %s: not logging them again",
                run_id,
                self.last_epoch,
                self.last_step,
            )

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
        self.last_step = step if self.last_step is None else max(self.last_step, step)
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def log_epoch(self, epoch: int, metrics: Mapping[str, float], step: int) -> bool:
        """Log epoch metrics and ``epoch`` at ``step``; False (and nothing logged) if already logged."""
        if self.last_epoch is not None and epoch <= self.last_epoch:
            log.info(
                "epoch %d already logged to run %s (last %d); skipped", epoch, self.run_id, self.last_epoch
            )
            return False
        self.flush()
        ts = _now_ms()
        batch = self._metrics(metrics, step, ts) + [Metric(EPOCH_METRIC, float(epoch), ts, int(step))]
        self._send(batch)
        self.last_epoch = epoch
        self.last_step = step if self.last_step is None else max(self.last_step, step)
        return True

    def flush(self) -> None:
        buffer, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        if buffer:
            self._send(buffer)

    def _send(self, metrics: list[Metric]) -> None:
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH], synchronous=True
            )

    # -- artifacts -----------------------------------------------------------------------------
    def log_artifact_file(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file; small text files are scrubbed of credentials first (JSON by key as well)."""
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
                        self.client.log_artifact(self.run_id, str(copy), artifact_path)
                    return
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_dict(self, d: Mapping | Any, name: str) -> None:
        """A (redacted) dict or dataclass as ``name`` (``.json`` or ``.yaml``) in the run's artifacts."""
        self.client.log_dict(self.run_id, _jsonable(redact(d)), name)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, redact_text(text), name)

    def log_figure(self, fig_or_png_path: Any, name: str) -> None:
        """A matplotlib figure or an existing image file, stored as ``name`` (e.g. ``curves/error.png``)."""
        if isinstance(fig_or_png_path, str | Path):
            src = Path(fig_or_png_path)
            target = Path(name)
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / target.name
                shutil.copyfile(src, copy)
                parent = str(target.parent) if str(target.parent) not in ("", ".") else None
                self.client.log_artifact(self.run_id, str(copy), parent)
        else:
            self.client.log_figure(self.run_id, fig_or_png_path, name)

    # -- system metrics ------------------------------------------------------------------------
    def start_system_metrics(self, sampling_interval: float = 10.0, node_id: str | None = None) -> bool:
        """MLflow's CPU/memory/GPU monitor on this run (needs ``psutil``; GPUs need ``nvidia-ml-py``)."""
        try:
            import psutil  # noqa: F401
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            log.warning("psutil is not installed: MLflow system metrics are not logged")
            return False
        self._system_monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=sampling_interval,
            resume_logging=True,
            node_id=node_id,
            tracking_uri=self.tracking_uri,
        )
        self._system_monitor.start()
        return True

    def close(self) -> None:
        self.flush()
        if self._system_monitor is not None:
            self._system_monitor.finish()
            self._system_monitor = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
