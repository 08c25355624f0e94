"""Training configuration: defaults are the paper's ImageNet recipe (section 3.4).

SGD, momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 scaled linearly with the global batch
(Goyal et al.), divided by 10 at epochs 30 and 60 of 90 (torchvision's reading of "divided by 10
when the error plateaus"). Everything the workers need travels as this one dataclass.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

LR_SCHEDULES = ("step", "plateau", "cosine")
AMP_MODES = ("auto", "bf16", "fp16", "off")
AUGMENTATIONS = ("rrc", "scale", "none", "pad-crop")
NORMALIZATIONS = ("imagenet", "cifar10")
DECODE_MODES = ("cpu", "gpu")


@dataclass(frozen=True)
class FaultInjection:
    """Kill or fail a worker at a given point, once: how the recovery tests make a real failure.

    ``marker`` is a file created when the fault fires, so the restarted group runs on.
    """

    epoch: int
    step: int = 0
    kind: str = "exit"  # "exit": the worker process dies (os._exit); "raise": an exception
    rank: int = 0
    marker: str | None = None


@dataclass
class TrainConfig:
    # data
    data: str = ""
    image_size: int = 224
    augmentation: str = "rrc"  # "pad-crop": CIFAR's 4-pixel zero pad + random crop + flip (section 4.2)
    normalization: str = "imagenet"  # mean/std applied on the device: "imagenet" or "cifar10"
    ten_crop: bool = False  # the paper's 10-crop testing, for validation
    shuffle_buffer: int = 1024
    data_node_resource: str | None = None  # custom resource of CPU data nodes: read and decode there
    data_node_label: str | None = None  # KEY=VALUE label of CPU data nodes: data there, training elsewhere
    decode: str = "cpu"  # "cpu": Ray Data decodes on the data nodes; "gpu": nvJPEG on the training device
    prefetch_batches: int = 2  # batches each worker has in flight ahead of the step
    num_classes: int | None = None  # set by the driver from the dataset manifest
    # model
    arch: str = "resnet50"
    shortcut: str | None = None
    stride: str = "v1.5"
    zero_init_residual: bool = False
    # optimisation (the paper's recipe)
    epochs: int = 90
    batch_size: int = 256  # global, over all workers
    lr: float | None = None  # default 0.1 * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_bn_weight_decay: bool = False
    label_smoothing: float = 0.0
    lr_schedule: str = "step"
    lr_milestones: tuple[int, ...] = (30, 60)
    lr_gamma: float = 0.1
    plateau_patience: int = 5
    warmup_epochs: int = 0
    # ResNet-110 on CIFAR (section 4.2): this lr until the training error falls below the threshold
    # (checked after every epoch), then the schedule's own rate. None: off.
    error_warmup_lr: float | None = None
    error_warmup_threshold: float = 0.8
    # execution
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int | None = None
    deterministic: bool = False  # order-preserving data and deterministic kernels (exact resume)
    # checkpoints and recovery
    storage: str = "runs"
    name: str | None = None
    resume: bool = False
    max_failures: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    # tracking
    experiment: str = "resnet-imagenet"
    tracking_uri: str | None = None
    register_as: str | None = None
    mlflow_run_id: str | None = None  # set by the driver
    log_every_steps: int = 10
    fault: FaultInjection | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from resnet_platform.models import get_spec

        get_spec(self.arch)  # unknown names fail here, on the driver, listing the valid ones
        for name, value, valid in (
            ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
            ("amp", self.amp, AMP_MODES),
            ("augmentation", self.augmentation, AUGMENTATIONS),
            ("normalization", self.normalization, NORMALIZATIONS),
            ("decode", self.decode, DECODE_MODES),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if self.batch_size % self.num_workers:
            raise ValueError(
                f"global batch {self.batch_size} does not divide evenly over {self.num_workers} workers"
            )
        if self.epochs < 1 or self.num_workers < 1 or self.checkpoint_every < 1:
            raise ValueError("epochs, num_workers and checkpoint_every must be at least 1")
        if self.decode == "gpu" and (self.augmentation == "pad-crop" or self.ten_crop):
            raise ValueError(
                "--decode gpu supports the rrc, scale and none augmentations, without --ten-crop"
            )
        _ = self.placement  # a malformed --data-node-label/--data-node-resource fails here, on the driver
        if self.deterministic and self.augmentation != "none":
            raise ValueError("deterministic runs need augmentation 'none': random crops cannot be replayed")
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.1 * self.batch_size / 256

    @property
    def placement(self):
        """Where the data pipeline's tasks run (``data/placement.py``)."""
        from resnet_platform.data.placement import DataPlacement

        return DataPlacement(node_label=self.data_node_label, node_resource=self.data_node_resource)

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers

    def storage_uri(self) -> str:
        """Local storage paths become absolute: Ray workers run in other directories."""
        if "://" in self.storage:
            return self.storage
        return os.path.abspath(self.storage)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        if isinstance(values.get("fault"), dict):
            values["fault"] = FaultInjection(**values["fault"])
        if values.get("lr_milestones") is not None:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values)
