"""The origin of a run's initial weights, in plain values: kept apart from ``lineage.py`` so the
training workers import it without MLflow."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_platform.errors import UserError


class ModelSourceError(UserError, ValueError):
    """A model source that cannot be used (no such alias, version, run or file): one line, naming it."""


@dataclass(frozen=True)
class WeightsOrigin:
    """A pinned source of weights: ``uri`` is what every worker loads (an alias resolved to its
    version, a path made absolute), the other fields what MLflow records about the parent."""

    uri: str
    model_name: str | None = None
    model_version: str | None = None
    run_id: str | None = None  # the parent's training run, when known
    checkpoint: str | None = None  # a checkpoint folder or state-dict file on storage

    def tags(self) -> dict[str, str]:
        values = {
            "init_from": self.uri,
            "parent_model_name": self.model_name,
            "parent_model_version": self.model_version,
            "parent_run_id": self.run_id,
            "parent_checkpoint": self.checkpoint,
        }
        return {k: str(v) for k, v in values.items() if v is not None}

    def describe(self) -> str:
        """One sentence for a registered version's description."""
        if self.model_name:
            what = f"registered model {self.model_name} version {self.model_version}"
        elif self.checkpoint:
            what = f"checkpoint {self.checkpoint}"
        else:
            what = self.uri
        run = f" (training run {self.run_id})" if self.run_id else ""
        return f"Fine-tuned from {what}{run}."


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/"))


__all__ = ["ModelSourceError", "WeightsOrigin", "is_mlflow_uri"]
