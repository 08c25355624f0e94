"""Training configuration: defaults are the paper's ImageNet recipe (section 3.4).

SGD, momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 scaled linearly with the global batch
(Goyal et al.), divided by 10 at epochs 30 and 60 of 90 (torchvision's reading of "divided by 10
when the error plateaus"). Everything the workers need travels as this one dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from resnet_platform.data.checks import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_SKIPPED_FRACTION
from resnet_platform.data.transforms import AUGMENTATIONS, DECODE_MODES
from resnet_platform.settings import check_ranges, setting
from resnet_platform.storage import absolute
from resnet_platform.tracking.limits import TrackingLimits

from .presets import RECIPE_NAMES, recipe_defaults

EPOCH_ORDERS = ("plan", "stream")

LR_SCHEDULES = ("step", "plateau", "cosine")
AMP_MODES = ("auto", "bf16", "fp16", "off")
NORMALIZATIONS = ("imagenet", "cifar10")
CHECKPOINT_UPLOAD_MODES = ("async", "sync")
# --resume (train/resume.py): auto continues the run --name when it exists, else starts it; must
# (--resume alone) refuses to start one; never refuses to continue one.
RESUME_MODES = ("auto", "must", "never")


@dataclass(frozen=True)
class FaultInjection:
    """Kill or fail a worker at a given point, once: how the recovery tests make a real failure.

    ``marker`` is a file created when the fault fires, so the restarted group runs on.
    """

    epoch: int
    step: int = 0
    # "exit": the worker process dies (os._exit); "raise": an exception; "preempt": the run is told a
    # preemption is pending at that step (as ray.train.get_preemption_info() would), writes its
    # preemption checkpoint, then rank ``rank`` dies (the node going away); "nan": that micro-batch's
    # loss is NaN (a diverging run: the loss guard must stop it)
    kind: str = "exit"
    rank: int = 0
    marker: str | None = None


def _auto_augments() -> tuple[str, ...]:
    from resnet_platform.data.augment import AUTO_AUGMENTS

    return AUTO_AUGMENTS


def _archs() -> list[str]:
    from resnet_platform.models import list_archs

    return list_archs()


def _shortcuts() -> tuple[str, ...]:
    from resnet_platform.models.resnet import SHORTCUT_OPTIONS

    return tuple(SHORTCUT_OPTIONS)


def _strides() -> tuple[str, ...]:
    from resnet_platform.models.resnet import STRIDE_PLACEMENTS

    return tuple(STRIDE_PLACEMENTS)


# Flag groups, in the order ``--help`` shows them.
FLAG_GROUPS = {
    "data": "data",
    "model": "model",
    "optimization": "optimization (defaults: the paper's recipe, section 3.4)",
    "execution": "execution",
    "checkpoints": "checkpoints and recovery",
    "tracking": "tracking (MLflow)",
    "finetune": "fine-tuning (start from trained weights: train/init_from.py)",
    "recipe": "recipe and modern techniques (--recipe fills these; a flag overrides; off in the paper's)",
}


@dataclass
class TrainConfig:
    """Every setting of a training run, one declaration each: the flags of every training job are
    generated from these fields (``resnet_platform/settings.py``)."""

    # data
    data: str = setting("", "dataset root written by prepare_imagenet.py (path or s3://)", group="data")
    image_size: int = setting(224, "crop size (smaller for small data sets)", group="data", at_least=1)
    augmentation: str = setting(
        "rrc",
        "rrc: RandomResizedCrop+flip; scale: the paper's [256,480] scale augmentation; none: resize+center "
        "crop; pad-crop: CIFAR's 4-pixel zero pad + random crop + flip (section 4.2)",
        group="data",
        choices=AUGMENTATIONS,
    )
    normalization: str = setting(
        "imagenet", "mean/std applied on the device", group="data", choices=NORMALIZATIONS
    )
    ten_crop: bool = setting(False, "validate with the paper's 10-crop testing", group="data")
    shuffle_buffer: int = setting(
        1024, "local shuffle buffer (rows; --epoch-order stream only)", group="data", at_least=0
    )
    epoch_order: str = setting(
        "plan",
        "plan: each epoch a seeded permutation every resume continues exactly (data/epoch_plan.py); "
        "stream: Ray Data's streaming split with a local shuffle buffer",
        group="data",
        choices=EPOCH_ORDERS,
    )
    shuffle_window_shards: int = setting(
        0,
        "shards whose samples each epoch plan permutes together (0: enough for 4,096 samples)",
        group="data",
        at_least=0,
    )
    data_node_label: str | None = setting(
        None,
        "label of the CPU data nodes (ray start --labels KEY=VALUE): reads and decodes run there, "
        "training workers never do",
        group="data",
        metavar="KEY=VALUE",
    )
    data_node_resource: str | None = setting(
        None,
        "custom resource of the CPU data nodes (e.g. data_cpu): every read and decode task asks for it",
        group="data",
    )
    decode: str = setting(
        "cpu",
        "cpu: Ray Data decodes on the data nodes; gpu: each training worker decodes the crop windows on "
        "its device (nvImageCodec: hardware JPEG engines, CUDA, then CPU; its CPU backend without a GPU)",
        group="data",
        choices=DECODE_MODES,
    )
    prefetch_batches: int = setting(
        2, "batches each worker has in flight ahead of the step", group="data", at_least=0
    )
    # The data-wait watchdog (train/data_wait.py): past these, a worker fails with one line naming
    # what the cluster lacks. Minutes, not seconds: an autoscaler may be adding a data node.
    data_wait_s: float = setting(
        600.0,
        "seconds a worker waits for an epoch's first batch before the run fails naming what Ray lacks; 0: off",
        group="data",
        at_least=0,
    )
    ingest_object_store_gib: float = setting(
        2.0,
        "object-store budget of each training-ingest stream (Ray Data's read-ahead), GiB; 0: Ray Data's "
        "default, half the object store",
        group="data",
        at_least=0,
    )
    data_wait_between_s: float = setting(
        300.0, "seconds a worker waits for each later batch of the epoch; 0: off", group="data", at_least=0
    )
    num_classes: int | None = setting(None, group="data", cli=False)  # from the dataset manifest
    # Training images per epoch (the manifest's count): how much of an epoch a mid-epoch resume has left.
    train_images: int | None = setting(None, group="data", cli=False)
    max_image_pixels: int | None = setting(
        DEFAULT_MAX_IMAGE_PIXELS,
        "images with more pixels (width x height) are rejected at read time, counted as skipped "
        "(default: Pillow's limit)",
        group="data",
    )
    max_skipped_fraction: float = setting(
        DEFAULT_MAX_SKIPPED_FRACTION,
        "fail the run, naming the worst shards, when more of a split's images could not be used "
        "(undecodable or above --max-image-pixels); checked every epoch",
        group="data",
    )
    # model
    arch: str = setting(
        "resnet50", "network name (see jobs/model_summary.py)", group="model", choices=_archs, metavar="ARCH"
    )
    shortcut: str | None = setting(
        None, "shortcut option (default: B, CIFAR nets A)", group="model", choices=_shortcuts
    )
    stride: str = setting("v1.5", "bottleneck stride placement", group="model", choices=_strides)
    zero_init_residual: bool = setting(False, "zero the last BN of each residual branch", group="model")
    # optimisation (the paper's recipe)
    epochs: int = setting(90, group="optimization", at_least=1)
    batch_size: int = setting(
        256,
        "global batch, over all workers (elastic: at the maximum worker count)",
        group="optimization",
        at_least=1,
    )
    lr: float | None = setting(
        None, "learning rate (default: 0.1 x batch-size / 256)", group="optimization", above=0
    )
    momentum: float = setting(0.9, group="optimization", at_least=0)
    weight_decay: float = setting(1e-4, group="optimization", at_least=0)
    no_bn_weight_decay: bool = setting(False, "no weight decay on BN and biases", group="optimization")
    label_smoothing: float = setting(0.0, group="optimization", at_least=0, at_most=1)
    lr_schedule: str = setting("step", group="optimization", choices=LR_SCHEDULES)
    lr_milestones: tuple[int, ...] = setting(
        (30, 60), "step schedule epochs", group="optimization", at_least=0
    )
    lr_gamma: float = setting(0.1, "factor at each decay", group="optimization", above=0)
    plateau_patience: int = setting(5, group="optimization", at_least=0)
    warmup_epochs: int = setting(0, "linear warmup (Goyal et al.)", group="optimization", at_least=0)
    # ResNet-110 on CIFAR (section 4.2): this lr until the training error falls below the threshold
    # (checked after every epoch), then the schedule's own rate. None: off.
    error_warmup_lr: float | None = setting(
        None,
        "ResNet-110's warm-up: this lr until the training error is below the threshold",
        group="optimization",
        above=0,
    )
    error_warmup_threshold: float = setting(0.8, group="optimization")
    # execution
    num_workers: int | tuple[int, int] = setting(
        2,
        "DDP workers (one GPU each with --use-gpu): N stays N; MIN-MAX (e.g. 4-16) is elastic, training "
        "on whatever fits between the bounds (see train/elastic.py for the batch and lr policy)",
        group="execution",
        metavar="N|MIN-MAX",
    )
    elastic_resize_interval_s: float = setting(
        60.0,
        "elastic runs: seconds between checks for added capacity (growing restarts the group from the "
        "latest checkpoint)",
        group="execution",
    )
    use_gpu: bool = setting(False, "one GPU per worker", group="execution")
    cpus_per_worker: float = setting(
        0.5, "CPUs reserved per training worker; the rest decode images", group="execution", above=0
    )
    amp: str = setting("auto", "auto: bf16 where supported, off on CPU", group="execution", choices=AMP_MODES)
    channels_last: bool = setting(True, "NCHW memory format instead of channels_last", group="execution")
    compile: bool = setting(False, "torch.compile the model", group="execution")
    seed: int | None = setting(None, group="execution")
    deterministic: bool = setting(
        False, "ordered data, deterministic kernels (exact resume)", group="execution"
    )
    # checkpoints and recovery
    storage: str = setting("runs", "where runs and checkpoints go (path or s3://)", group="checkpoints")
    name: str | None = setting(
        None, "run name (default: ARCH-TIMESTAMP-XXXX, a new run)", group="checkpoints"
    )
    resume: str = setting(
        "auto",
        "auto: continue the run --name at --storage if it exists (same settings), else start it; "
        "--resume alone (must): it must exist; never: it must not",
        group="checkpoints",
        choices=RESUME_MODES,
        const="must",
    )
    max_failures: int = setting(0, "worker-group restarts allowed", group="checkpoints", at_least=-1)
    max_preemptions: int = setting(
        -1,
        "restarts after node preemptions (spot reclaims, drains), counted apart from --max-failures; "
        "-1: unlimited",
        group="checkpoints",
    )
    preemption_check_steps: int = setting(
        10,
        "steps between checks for a pending preemption (a checkpoint follows at the next boundary); "
        "0: never check",
        group="checkpoints",
    )
    checkpoint_upload: str = setting(
        "async",
        "async: the next epoch starts while the checkpoint uploads (one upload in flight at most); "
        "sync: every worker waits for the upload",
        group="checkpoints",
        choices=CHECKPOINT_UPLOAD_MODES,
    )
    checkpoint_every: int = setting(1, "epochs between checkpoints", group="checkpoints", at_least=1)
    checkpoint_every_steps: int = setting(
        0,
        "optimizer steps between mid-epoch checkpoints (uploaded in the background, kept under "
        "--keep-checkpoints; a restart continues from the newest); 0: off",
        group="checkpoints",
        at_least=0,
    )
    keep_checkpoints: int = setting(3, "best K kept by val error", group="checkpoints", at_least=1)
    # tracking
    experiment: str = setting("resnet-imagenet", group="tracking")
    tracking_uri: str | None = setting(
        None, "default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db", group="tracking"
    )
    register_as: str | None = setting(None, "register the best model under this name", group="tracking")
    mlflow_run_id: str | None = setting(None, group="tracking", cli=False)  # set by the driver
    log_every_steps: int = setting(10, "steps between rank 0's step metrics", group="tracking", at_least=1)
    # In-epoch progress from rank 0 (train/progress.py): a bar on a terminal, else these lines.
    progress_every_s: float = setting(
        60.0,
        "output to a file: a progress line (step, img/s, ETA) every this many seconds; 0: none",
        group="tracking",
        at_least=0,
    )
    progress_every_steps: int = setting(
        0,
        "output to a file: also a progress line every this many steps; 0: none",
        group="tracking",
        at_least=0,
    )
    # MLflow calls from the driver and rank 0 have deadlines; an outage never stops training.
    mlflow_timeout_s: int = setting(
        TrackingLimits.timeout_s, "seconds per MLflow request (one retry)", group="tracking", at_least=1
    )
    mlflow_retry_interval_s: float = setting(
        TrackingLimits.retry_interval_s,
        "while MLflow is down, seconds between tries (metrics are buffered meanwhile)",
        group="tracking",
    )
    # recipe and modern techniques (train/techniques.py; presets in train/recipes.py)
    recipe: str = setting(
        "paper",
        "preset of defaults: paper, torchvision-v2 (ResNet-50 80.9%%), fast (FFCV-like)",
        group="recipe",
        choices=RECIPE_NAMES,
    )
    auto_augment: str = setting(
        "none", "per-image automatic augmentation after the crop", group="recipe", choices=_auto_augments
    )
    random_erase: float = setting(
        0.0, "random erasing probability (filled with the mean)", group="recipe", at_least=0, at_most=1
    )
    mixup_alpha: float = setting(
        0.0, "Mixup Beta(a, a) on the device per batch; 0: off", group="recipe", at_least=0
    )
    cutmix_alpha: float = setting(
        0.0, "CutMix Beta(a, a); with Mixup, one of the two per batch", group="recipe", at_least=0
    )
    ema: bool = setting(
        False, "--ema/--no-ema: an EMA of the weights, validated and checkpointed beside them", group="recipe"
    )
    ema_decay: float = setting(
        0.99998, "torchvision's --model-ema-decay, rescaled by batch x ema-steps / epochs", group="recipe"
    )
    ema_steps: int = setting(32, "optimizer steps between EMA updates", group="recipe", at_least=1)
    register_ema: bool = setting(
        False,
        "--register-ema/--no-register-ema: with --ema, rank checkpoints by, log and register the EMA",
        group="recipe",
    )
    grad_accum_steps: int = setting(
        1,
        "micro-batches per optimizer step: the global batch on fewer or smaller GPUs",
        group="recipe",
        at_least=1,
    )
    warmup_start_factor: float | None = setting(
        None, "linear warmup from this fraction of the lr; unset: (epoch+1)/(warmup+1)", group="recipe"
    )
    val_image_size: int | None = setting(
        None, "evaluation crop; unset: --image-size", group="recipe", at_least=1
    )
    val_resize_size: int | None = setting(
        None, "evaluation shorter-side resize; unset: 256/224 of the eval crop", group="recipe", at_least=1
    )
    progressive_min_size: int | None = setting(
        None,
        "progressive resizing: the train crop grows from this to --image-size; unset: off",
        group="recipe",
        at_least=1,
    )
    progressive_ramp: tuple[float, ...] = setting(
        (0.7, 0.83), "progressive resizing ramp: start,end as fractions of the epochs", group="recipe"
    )
    progressive_step: int = setting(32, "progressive sizes are multiples of this", group="recipe", at_least=1)
    # fine-tuning (train/init_from.py, models/freeze.py)
    init_from: str | None = setting(
        None,
        "start from these weights: a state dict file, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID"
        "[/MODEL], or a checkpoint folder (path or s3://); the classifier is replaced when the class count "
        "differs, optimizer and epochs start fresh",
        group="finetune",
        metavar="SOURCE",
    )
    freeze: str | None = setting(
        None, "parts that stay as loaded: e.g. stem,layer1,layer2 or all-but-head", group="finetune"
    )
    head_lr_factor: float = setting(
        1.0, "the classifier's learning rate, as a multiple of --lr", group="finetune", above=0
    )
    fault: FaultInjection | None = field(default=None, repr=False)
    # Tests: a folder where each rank writes the plan positions and sample ids it trains per epoch.
    trace_samples: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from resnet_platform.models import get_spec

        check_ranges(self)  # each setting's declared range: --batch-size 0 stops here, on the driver
        if isinstance(self.resume, bool):  # the former switch, still passed by sweeps' trials and tests
            self.resume = "must" if self.resume else "never"
        get_spec(self.arch)  # unknown names fail here, on the driver, listing the valid ones
        for name, value, valid in (
            ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
            ("amp", self.amp, AMP_MODES),
            ("augmentation", self.augmentation, AUGMENTATIONS),
            ("normalization", self.normalization, NORMALIZATIONS),
            ("decode", self.decode, DECODE_MODES),
            ("checkpoint_upload", self.checkpoint_upload, CHECKPOINT_UPLOAD_MODES),
            ("resume", self.resume, RESUME_MODES),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        from .elastic import parse_worker_count

        self.num_workers = parse_worker_count(self.num_workers)
        if self.batch_size % self.max_workers:
            raise ValueError(
                f"global batch {self.batch_size} does not divide evenly over {self.max_workers} workers"
            )
        if self.epochs < 1 or self.checkpoint_every < 1:
            raise ValueError("epochs and checkpoint_every must be at least 1")
        if self.max_preemptions < -1 or self.preemption_check_steps < 0 or self.elastic_resize_interval_s < 0:
            raise ValueError(
                "max preemptions must be -1 (unlimited) or more; preemption check steps and the elastic "
                "resize interval cannot be negative"
            )
        if self.decode == "gpu" and (self.augmentation == "pad-crop" or self.ten_crop):
            raise ValueError(
                "--decode gpu supports the rrc, scale and none augmentations, without --ten-crop"
            )
        _ = self.placement  # a malformed --data-node-label/--data-node-resource fails here, on the driver
        if self.ingest_object_store_gib < 0:
            raise ValueError("the ingest object-store budget cannot be negative (0: Ray Data's default)")
        if self.data_wait_s < 0 or self.data_wait_between_s < 0:
            raise ValueError("data wait limits cannot be negative (0 turns the watchdog off)")
        if not 0 <= self.max_skipped_fraction <= 1:
            raise ValueError(f"max skipped fraction must be between 0 and 1, got {self.max_skipped_fraction}")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ValueError(f"max image pixels must be positive, got {self.max_image_pixels}")
        if self.deterministic and self.augmentation != "none" and not self.uses_epoch_plan:
            raise ValueError(
                "deterministic runs with augmentation need --epoch-order plan on the CPU decode path "
                "(each sample's crop from its own generator): elsewhere random crops cannot be replayed"
            )
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)
        self.progressive_ramp = tuple(float(r) for r in self.progressive_ramp)
        from resnet_platform.train import techniques

        recipe_defaults(self.recipe)  # an unknown name fails here, listing the valid ones
        techniques.check(self)

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.1 * self.batch_size / 256

    @property
    def uses_epoch_plan(self) -> bool:
        """Training order from the epoch plan: ``--epoch-order plan`` on the CPU decode path (the GPU
        decode path reads Ray Data's streaming split)."""
        return self.epoch_order == "plan" and self.decode == "cpu"

    @property
    def placement(self):
        """Where the data pipeline's tasks run (``data/placement.py``)."""
        from resnet_platform.data.placement import DataPlacement

        return DataPlacement(node_label=self.data_node_label, node_resource=self.data_node_resource)

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def per_worker_batch(self) -> int:
        """Fixed for the run: ``batch_size`` is the global batch at ``max_workers`` (train/elastic.py)."""
        return self.batch_size // self.max_workers

    @property
    def micro_batch_size(self) -> int:
        """What each worker loads and forwards at once: its share, split by ``grad_accum_steps``."""
        return self.per_worker_batch // self.grad_accum_steps

    @property
    def score_metric(self) -> str:
        """The validation metric that ranks checkpoints and picks the model to log."""
        return "ema_val_top1_error" if self.registers_ema else "val_top1_error"

    @property
    def registers_ema(self) -> bool:
        """The EMA's weights are the run's model (``--ema`` with ``--register-ema``)."""
        return self.ema and self.register_ema

    @property
    def run_uri(self) -> str:
        """Where the run lives (storage/name): also the key of its skip ledger (data/skip_ledger.py)."""
        return f"{self.storage_uri().rstrip('/')}/{self.name}"

    def storage_uri(self) -> str:
        """Local storage paths become absolute: Ray workers run in other directories."""
        return absolute(self.storage)

    def tracking_limits(self) -> TrackingLimits:
        return dataclasses.replace(
            TrackingLimits(), timeout_s=self.mlflow_timeout_s, retry_interval_s=self.mlflow_retry_interval_s
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        if isinstance(values.get("fault"), dict):
            values["fault"] = FaultInjection(**values["fault"])
        for name in ("lr_milestones", "progressive_ramp"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)
