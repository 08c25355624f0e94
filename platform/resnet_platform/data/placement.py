"""Where image reads and decodes run: on CPU data nodes, never on the GPU nodes that train.

Two ways to name the data nodes, both applied to every Ray Data operator the platform builds
(Parquet reads, decodes, CIFAR lookups) and to Ray Train's ingest options:

- a node label (``--data-node-label role=data``; Ray 2.60's recommended mechanism, ``ray start
  --labels role=data``): read and decode tasks carry ``label_selector={"role": "data"}``, and the
  training workers carry the negation ``{"role": "!data"}``, so they never reserve a data node's CPUs;
- a custom resource (``--data-node-resource data_cpu``; ``ray start --resources '{"data_cpu": N}'``):
  every read and decode task asks for one unit of it, and the training workers carry
  ``{"ray.io/node-id": "!in(<the nodes advertising it>)"}`` (:meth:`DataPlacement.worker_selector_on`,
  read from the cluster when the trainer is built), so they never take a data node's CPUs and starve
  the reads. Where every node advertises the resource, the run refuses to start, saying how to fix it.
  A data node that joins later is not in that list: a label (``--data-node-label``) covers it too.

Ray 2.60 deprecates ``ExecutionOptions.exclude_resources`` in favour of label selectors; the
platform never sets it (see ``train/runner.py``'s ingest options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from resnet_platform.data.checks import DataCheckError

NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries it (Ray 2.60's default labels)
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")


class PlacementError(DataCheckError):
    """A malformed ``--data-node-label`` or ``--data-node-resource``, or a cluster where it would
    starve the reads: one line for the user (a ``DataCheckError``, so every job prints it so)."""


@dataclass(frozen=True)
class DataPlacement:
    node_label: str | None = None  # "KEY=VALUE" that only the CPU data nodes carry
    node_resource: str | None = None  # custom resource only the CPU data nodes advertise

    def __post_init__(self) -> None:
        if self.node_label is not None:
            key, sep, value = self.node_label.partition("=")
            if not sep or not _LABEL.match(key) or not _LABEL.match(value):
                raise PlacementError(
                    f"--data-node-label {self.node_label!r}: expected KEY=VALUE (letters, digits, . _ - /), "
                    "e.g. role=data, as given to `ray start --labels`"
                )
        if self.node_resource is not None and not _LABEL.match(self.node_resource):
            raise PlacementError(f"--data-node-resource {self.node_resource!r}: not a resource name")

    @property
    def active(self) -> bool:
        return bool(self.node_label or self.node_resource)

    @property
    def data_selector(self) -> dict[str, str] | None:
        """Label selector of the data tasks: run only where the label is."""
        if not self.node_label:
            return None
        key, _, value = self.node_label.partition("=")
        return {key: value}

    @property
    def worker_selector(self) -> dict[str, str] | None:
        """Label selector of the training workers: run anywhere but the data nodes."""
        if not self.node_label:
            return None
        key, _, value = self.node_label.partition("=")
        return {key: f"!{value}"}

    def worker_selector_on(self, nodes: list[dict]) -> dict[str, str] | None:
        """Label selector of the training workers on a cluster of ``nodes`` (``ray.nodes()``): off
        the labelled data nodes, and off every live node that advertises ``node_resource``. Raises
        PlacementError when that leaves no node at all."""
        selector = dict(self.worker_selector or {})
        if not self.node_resource:
            return selector or None
        alive = [n for n in nodes if n.get("Alive")]
        data = sorted(n["NodeID"] for n in alive if n.get("Resources", {}).get(self.node_resource))
        if data and len(data) == len(alive):
            raise PlacementError(
                f"--data-node-resource {self.node_resource}: every node of the cluster advertises it, so the "
                "training workers would take the data nodes' CPUs and the reads could never run; start the "
                "training nodes without that resource, or drop --data-node-resource"
            )
        if data:
            selector[NODE_ID_LABEL] = f"!in({', '.join(data)})"
        return selector or None

    def task_args(self) -> dict[str, Any]:
        """Keyword arguments of a Ray Data read or ``map_batches`` that pin it to the data nodes."""
        args: dict[str, Any] = {}
        if self.node_resource:
            args["resources"] = {self.node_resource: 1}
        if self.node_label:
            args["label_selector"] = self.data_selector
        return args
