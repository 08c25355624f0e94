"""One training worker's run, as an object: build, restore, then per epoch train, validate, report.

Shaped like Ray's own benchmark runner (``release/train_tests/benchmark``: ``TrainLoopRunner.run ->
train_epoch -> train_step``): the fields are what every phase shares (model, optimizer, schedule,
position in the run, the uploader, the preemption watch), so no phase takes a dozen parameters and
no closure holds state. Where things live:

- ``train/worker_data.py``: which batches a worker reads (the driver/worker data contract);
- ``train/epoch.py``: a pass's running sums, exact evaluation, the epoch's metrics row;
- ``train/checkpoint.py``: what a checkpoint holds; ``train/uploads.py``: how it reaches storage;
- ``train/preemption.py``: when a pending preemption is seen, and where a resumed epoch continues;
- ``train/faults.py``: the failures the recovery tests inject;
- ``train/progress.py``: rank 0's progress inside an epoch.

Batches arrive as uint8 HWC from Ray Data; normalization happens here, on the device.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from resnet_platform import _compat
from resnet_platform.data.checks import check_skip_budget
from resnet_platform.data.transforms import NORMALIZATION_STATS
from resnet_platform.models import build_model

from . import elastic, init_from
from .accumulate import Accumulator, with_last
from .checkpoint import (
    TrainingState,
    load_checkpoint,
    model_config_of,
    restore_rng,
    save_checkpoint,
    step_checkpoint_name,
)
from .config import TrainConfig
from .data_wait import watched
from .device import Normalizer, resolve_amp, seed_everything, unwrap
from .epoch import EpochStats, EpochSums, epoch_metrics, evaluate_models, format_epoch
from .faults import maybe_inject_fault
from .loss_guard import LossGuard
from .metrics import all_reduce_max, topk_correct
from .optim import EpochSchedule, build_optimizer
from .preemption import (
    EpochPosition,
    PreemptionWatch,
    ResumePlan,
    describe,
    preempt_checkpoint_name,
    resume_plan,
)
from .progress import EpochProgress
from .techniques import WorkerTechniques
from .uploads import CheckpointUploader
from .worker_data import PlanSource

log = logging.getLogger(__name__)


def _open_logger(config: TrainConfig, rank: int):
    if rank != 0 or not config.mlflow_run_id:
        return None
    from resnet_platform.tracking.worker_logger import RunLogger

    logger = RunLogger(config.tracking_uri, config.mlflow_run_id, limits=config.tracking_limits())
    logger.start_system_metrics()  # CPU, memory, GPU of rank 0's node
    return logger


def _durations(metrics: dict[str, float]) -> dict[str, float]:
    """What MLflow gets of a history row: everything but the wall-clock stamps (``*_at``)."""
    return {k: v for k, v in metrics.items() if not k.endswith("_at")}


@dataclass
class WorkerRun:
    """What one worker's phases share. :meth:`build` makes it inside a Ray Train worker; a test can
    construct one directly around a small model (Ray-only parts left ``None``)."""

    config: TrainConfig
    model: nn.Module  # DDP-wrapped in a Ray worker; ``unwrap`` gives the network
    optimizer: torch.optim.Optimizer
    schedule: EpochSchedule
    normalize: Normalizer
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    rank: int = 0
    world: int = 1  # the group's size now (an elastic group's changes between restarts)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    forward_model: nn.Module | None = None  # the compiled model with --compile
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    techniques: WorkerTechniques | None = None
    state: TrainingState = field(default_factory=TrainingState)
    position: EpochPosition | None = None  # set when resuming from a mid-epoch (preemption) checkpoint
    logger: object | None = None  # rank 0's MLflow logger
    uploader: CheckpointUploader | None = None
    watch: PreemptionWatch | None = None
    guard: LossGuard = field(default_factory=LossGuard)  # a non-finite loss stops the run
    train_shard: object | None = None  # Ray Data's streaming split (--epoch-order stream)
    val_shard: object | None = None
    plan_source: PlanSource | None = None  # the epoch plan's reader (--epoch-order plan)

    def __post_init__(self) -> None:
        if self.forward_model is None:
            self.forward_model = self.model

    # ------------------------------------------------------------------------------------- build
    @classmethod
    def build(cls, config: TrainConfig) -> WorkerRun:
        """Inside a Ray Train worker: seeds, network (DDP), optimizer, schedule, AMP; not yet restored."""
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
        if config.seed is not None:
            seed_everything(config.seed + rank)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = build_model(config.arch, config.num_classes, **model_config_of(config)["options"])
        model = init_from.apply(model, config)  # --init-from weights and --freeze, before DDP wraps it
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = ray.train.torch.prepare_model(model)
        optimizer = build_optimizer(model, config)
        amp_dtype = resolve_amp(config.amp, device)
        return cls(
            config=config,
            model=model,
            optimizer=optimizer,
            # Elastic runs: the rate follows the global batch of this many workers (train/elastic.py).
            schedule=EpochSchedule(optimizer, config, lr_scale=elastic.lr_scale(config, world)),
            normalize=Normalizer(device, config.channels_last, *NORMALIZATION_STATS[config.normalization]),
            criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
            rank=rank,
            world=world,
            device=device,
            forward_model=torch.compile(model) if config.compile else model,
            amp_dtype=amp_dtype,
            scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None,
            techniques=WorkerTechniques(config, unwrap(model), device),
            uploader=CheckpointUploader(config.checkpoint_upload, rank),
            watch=PreemptionWatch(config, rank),
            train_shard=None if config.uses_epoch_plan else ray.train.get_dataset_shard("train"),
            plan_source=PlanSource.open(config) if config.uses_epoch_plan else None,
            val_shard=ray.train.get_dataset_shard("val"),
        )

    def restore(self) -> None:
        """Continue from Ray Train's latest checkpoint, if any: weights, optimizer, schedule, scaler,
        the techniques' state, the position in the run (mid-epoch too), rank 0's RNGs."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as directory:
            saved = load_checkpoint(directory, map_location=self.device)
        unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        if self.scaler is not None and saved["scaler"] is not None:
            self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainingState(
            saved["epoch"], saved["step"], saved["best_val_top1_error"], list(saved["history"])
        )
        self.techniques.load_state_dict(saved)
        self.position = EpochPosition.from_dict(saved.get("position"))
        if self.rank == 0:
            restore_rng(saved["rng"])
        elif self.config.seed is not None:
            seed_everything(self.config.seed + self.rank + 1000 * self.state.epoch)
        where = f" and {self.position.steps} steps of epoch {self.state.epoch + 1}" if self.position else ""
        log.info(
            "rank %d resumed after epoch %d%s (step %d)", self.rank, self.state.epoch, where, self.state.step
        )

    # --------------------------------------------------------------------------------------- run
    def run(self) -> None:
        """Every remaining epoch, then the last checkpoint stored before the worker returns."""
        self.logger = _open_logger(self.config, self.rank)
        if self.rank == 0:  # every group start: the first, each resize, each restart
            elastic.log_world_size(self.logger, self.world, self.state.step, self.config)
        try:
            for epoch in range(self.state.epoch, self.config.epochs):
                self.run_epoch(epoch)
        except BaseException:
            # A failure in this process (not its death): the checkpoint already handed to the upload
            # thread still reaches storage and is registered before the group restarts.
            self.uploader.finish_quietly()
            raise
        self.uploader.wait()  # the last checkpoint stored (and its epoch logged) before the worker returns
        if self.logger is not None:
            self.logger.close()

    def run_epoch(self, epoch: int) -> None:
        """Train, validate, step the schedule, report the epoch (with a checkpoint when due)."""
        from .worker_data import epoch_batches

        config = self.config
        started_at = time.time()
        shuffle_seed = None if config.seed is None else config.seed * 1000 + epoch
        carried = self.position if self.position is not None and self.position.epoch == epoch else None
        plan = resume_plan(carried, config, self.world)
        self.position = None
        size = self.techniques.train_size(epoch)
        if self.plan_source is not None:  # data/epoch_plan.py: this epoch's order, from where it got to
            batches = self.plan_source.batches(
                config, self.device, epoch=epoch, start=plan.start_sample, rank=self.rank, world=self.world
            )
        else:
            batches = epoch_batches(
                self.train_shard,
                config,
                self.device,
                train=True,
                shuffle_seed=shuffle_seed,
                image_size=size,
                epoch=epoch,
            )
        batches = watched(batches, config, "train", self.rank)  # train/data_wait.py: never a silent wait
        train = self.train_epoch(batches, plan=plan, carried=carried, image_size=size)
        evals = self.validate()
        if (
            self.rank == 0
        ):  # every worker has consumed its rows (the evaluation all-reduced): skips are recorded
            check_skip_budget(config.data, ("train", "val"), config.max_skipped_fraction, run=config.run_uri)
        metrics = self.end_epoch(epoch, train, evals, started_at, size)
        save_now = self.state.epoch % config.checkpoint_every == 0 or self.state.epoch == config.epochs
        self.report_epoch(metrics, f"checkpoint_epoch_{self.state.epoch:04d}" if save_now else None)

    # ----------------------------------------------------------------------------------- training
    def train_epoch(
        self,
        batches,
        *,
        plan: ResumePlan | None = None,
        carried: EpochPosition | None = None,
        image_size: int | None = None,
    ) -> EpochStats:
        """One pass over the training shard. Loss and top-k counts accumulate on the device; the host
        reads them only at logging steps and once at the end (after the all-reduce).

        After a mid-epoch checkpoint, ``plan`` says where the epoch continues and ``carried`` holds
        its sums so far. After each optimizer step every worker reaches :meth:`preemption_boundary`
        (``steps`` counts micro-batches, so a resume skips exactly the ones trained on).

        ``techniques`` (``train/techniques.py``) resize each batch to ``image_size``, mix it, and
        update the EMA after each optimizer step; the optimizer steps once per ``grad_accum_steps``
        micro-batches (``train/accumulate.py``). ``state.step`` counts optimizer steps."""
        self.forward_model.train()
        plan = plan or ResumePlan()
        sums = EpochSums(self.device, self.state.epoch, self.world, plan, carried)
        accumulator = Accumulator(
            self.forward_model, self.optimizer, self.scaler, self.config.grad_accum_steps
        )
        batches = iter(batches)
        for _ in range(plan.skip_batches):  # deterministic resume: the batches already trained on
            if next(batches, None) is None:
                break
        sums.resume_clock()
        progress = (
            EpochProgress(self.config, self.state.epoch, self.world, plan.start_step)
            if self.rank == 0
            else None
        )
        try:
            for step_in_epoch, (batch, is_last) in enumerate(with_last(batches), start=plan.start_step):
                if plan.max_steps is not None and sums.trained >= plan.max_steps:
                    # The streaming split's rest is read and dropped, not abandoned: a split left
                    # half-read gave the next epoch no rows (Ray 2.60).
                    for _ in batches:
                        pass
                    break
                sums.waited()
                loss = self.train_step(batch, is_last, step_in_epoch, sums, accumulator, image_size)
                if progress is not None:
                    progress.update(step_in_epoch, int(batch["label"].shape[0]), loss)
                if accumulator.stepped:
                    self.preemption_boundary(step_in_epoch, sums)
                sums.resume_clock()
        finally:
            if progress is not None:
                progress.close()
        return sums.stats()

    def train_step(
        self, batch, is_last: bool, step_in_epoch: int, sums: EpochSums, accumulator, image_size
    ) -> torch.Tensor:
        """Forward and backward one micro-batch; after the last of an optimizer step: the schedule's
        low-rate phase check, the techniques' step (EMA), rank 0's step metrics. Returns the loss."""
        config, state, device = self.config, self.state, self.device
        poison = maybe_inject_fault(config, self.rank, state.epoch, step_in_epoch)  # True: a "nan" fault
        x, y = self.normalize(batch["image"]), batch["label"]
        target = hard = y
        if self.techniques is not None:
            x, target, hard = self.techniques.prepare(
                x, y, image_size or config.image_size, self.normalize.format
            )
        with accumulator.micro_step(is_last):
            with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.forward_model(x)
                loss = self.criterion(logits, target)
                if poison:
                    loss = loss * float("nan")
            accumulator.backward(loss)
        # Queued on the device (no host sync); checked at logging steps and before each report.
        self.guard.observe(loss, epoch=state.epoch + 1, step=state.step + 1)
        sums.add(loss, topk_correct(logits.detach(), hard), y.shape[0], self.schedule.error_warmup)
        if not accumulator.stepped:
            return loss
        state.step += 1
        if self.schedule.error_warmup:
            self.schedule.observe_step_error(sums.warm_error())
        if self.techniques is not None:
            self.techniques.after_step(state.step, state.epoch)
        if state.step % config.log_every_steps != 0:
            return loss
        self.guard.check_all(device)  # every rank, the same steps: all raise, or none
        if self.logger is not None:
            self.logger.log_step(
                {
                    "train_loss": float(loss.detach()),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "images_per_s_worker": sums.images / sums.elapsed(),
                },
                step=state.step,
            )
        return loss

    def validate(self) -> dict[str, EpochStats]:
        """The raw weights' (``""``) and the EMA's validation, every image counted once."""
        from .worker_data import epoch_batches

        batches = epoch_batches(self.val_shard, self.config, self.device, train=False, shuffle_seed=None)
        batches = watched(batches, self.config, "val", self.rank)  # train/data_wait.py: never a silent wait
        models = self.techniques.eval_models(self.model) if self.techniques is not None else {"": self.model}
        return evaluate_models(models, batches, self.criterion, self.amp_dtype, self.normalize, self.device)

    # ------------------------------------------------------------------------------------ metrics
    def end_epoch(self, epoch: int, train: EpochStats, evals: dict, started_at: float, size: int) -> dict:
        """Step the schedule, move the run's position past ``epoch``, return its metrics row (also
        appended to the history) and print the epoch's line on rank 0."""
        config, state = self.config, self.state
        val = evals[""]
        lr = self.schedule.lr
        self.schedule.step(val.top1_error, train.top1_error)
        state.epoch = epoch + 1
        state.best_val_top1_error = min(state.best_val_top1_error, val.top1_error)
        metrics = epoch_metrics(
            epoch=state.epoch,
            step=state.step,
            lr=lr,
            train=train,
            evals=evals,
            epoch_seconds=all_reduce_max(train.seconds, self.device),
            data_wait_s=all_reduce_max(train.data_wait_s, self.device),
            world=self.world,
        )
        metrics["epoch_started_at"] = started_at
        metrics["best_val_top1_error"] = state.best_val_top1_error
        if config.progressive_min_size is not None:
            metrics["train_image_size"] = size
        state.history.append({k: float(v) for k, v in metrics.items()})
        if self.rank == 0:  # a platform line: printed once, also when Ray's INFO lines are not
            log.info(format_epoch(metrics, config.epochs))
        return metrics

    def report_epoch(self, metrics: dict, name: str | None) -> None:
        """Report (and checkpoint when ``name``) the epoch, then log it to MLflow.

        The epoch goes to MLflow now, not once its checkpoint is stored: a worker stopped right after
        ``report`` (Tune's early stop, a preemption restart) must not lose it. If the upload then
        fails, the restart trains the epoch again and MLflow keeps the first record of it (each epoch
        once). Durations only: the wall-clock stamps stay in the history."""
        timing = self.save_and_report(metrics, name)
        row = self.state.history[-1]
        row.update(timing)  # reaches the checkpoints from the next one on, and MLflow below
        if self.logger is not None:
            self.logger.log_epoch(self.state.epoch, _durations(row), step=self.state.step)
        self.uploader.after_upload(functools.partial(self._log_upload, row, self.state.step))

    def _log_upload(self, row: dict, step: int, upload) -> None:
        """The upload's own timings, once it is stored (at the epoch's step)."""
        if upload is not None:
            row.update(upload.stats())
            if self.logger is not None:
                self.logger.log_event(_durations(upload.stats()), step=step)

    # -------------------------------------------------------------------------------- checkpoints
    def save_and_report(self, metrics: dict, name: str | None, position: EpochPosition | None = None) -> dict:
        """Rank 0 writes the checkpoint (``name`` given) to a local folder; every rank reports. Every
        rank first checks the loss guard (a collective): no report, and no checkpoint, after a
        non-finite loss."""
        self.guard.check_all(self.device)
        directory = None
        save_s = wait_s = 0.0
        if name is not None and self.rank == 0:
            t0 = time.perf_counter()
            self.uploader.wait()  # one upload in flight at most; the checkpoint then holds its timings
            wait_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            directory = tempfile.mkdtemp(prefix="resnet-ckpt-")
            save_checkpoint(
                directory,
                model=unwrap(self.model),
                optimizer=self.optimizer,
                schedule=self.schedule,
                scaler=self.scaler,
                state=self.state,
                config=self.config.to_dict(),
                model_config=model_config_of(self.config),
                position=position.to_dict() if position is not None else None,
                extra=self.techniques.state_dict(),
            )
            save_s = time.perf_counter() - t0
        report_s = wait_s + self.uploader.report(metrics, directory, name)
        return {"report_s": report_s, "checkpoint_save_s": save_s}

    def preemption_boundary(self, step_in_epoch: int, sums: EpochSums) -> None:
        """After each optimizer step, on every worker: poll the upload now and then; every
        ``--checkpoint-every-steps`` steps, a mid-epoch checkpoint uploaded in the background; when a
        preemption is pending, one that is stored before the node goes. Both hold the epoch's
        position (a collective: every rank reaches the same steps)."""
        if self.uploader is None or self.watch is None:  # a bare run (tests): nothing to report to
            return
        config, state = self.config, self.state
        if (step_in_epoch + 1) % config.log_every_steps == 0:
            self.uploader.poll()  # an epoch whose checkpoint is now stored goes to MLflow
        every = config.checkpoint_every_steps
        if every and state.step % every == 0:
            # Not waited for: training goes on while it uploads (the next save waits for it).
            self.save_mid_epoch(sums, step_checkpoint_name(state.epoch, state.step), "step_checkpoint")
        if not self.watch.due(step_in_epoch):
            return
        info = self.watch.check(state.epoch, step_in_epoch)
        if info is None:
            return
        name = preempt_checkpoint_name(state.epoch, state.step)
        if self.rank == 0:
            log.warning("preemption pending on %s: checkpoint %s", describe(info), name)
        self.save_mid_epoch(sums, name, "preemption_checkpoint")
        self.uploader.wait()  # stored before the node goes: the restart resumes from here
        self.watch.after_checkpoint()

    def save_mid_epoch(self, sums: EpochSums, name: str, kind: str) -> None:
        """A checkpoint of the epoch in progress, with its position (all-reduced: every rank calls
        this at the same step), reported under ``name`` with ``kind`` = 1 among its metrics."""
        state = self.state
        here = sums.position()
        if self.rank == 0:  # a step checkpoint's line only with --verbose: quiet output
            log.log(
                logging.INFO if kind == "preemption_checkpoint" else logging.DEBUG,
                "checkpoint %s: epoch %d, %d steps, %d images into it",
                name,
                state.epoch + 1,
                here.steps,
                here.images,
            )
        # Ranked worst by val error, so Ray's keep-best never prefers it; Ray keeps the latest
        # checkpoint whatever its rank (CheckpointManager._save_state_and_delete_old_checkpoints).
        # Not inf: Ray's snapshot would store null, and a resubmitted run fail ranking (_compat).
        unranked = _compat.unranked_score()
        metrics = {"epoch": state.epoch, "step": state.step, "val_top1_error": unranked}
        metrics[self.config.score_metric] = unranked  # the EMA's error with --register-ema
        metrics[kind] = 1.0
        self.save_and_report(metrics, name, here)
