"""The per-worker training loop: ordinary PyTorch plus Ray Train's prepare/shard/report.

Reads top to bottom like torchvision's reference ``train.py``: build, restore, then for each
epoch train, validate exactly, step the schedule, report (with a checkpoint every N epochs).
Batches arrive as uint8 HWC from Ray Data; normalization happens here, on the device.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from resnet_platform.console import quiet_train_worker
from resnet_platform.data.checks import check_skip_budget
from resnet_platform.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATION_STATS,
    channel_stats,
    normalize,
)
from resnet_platform.models import build_model

from . import elastic, init_from
from .accumulate import Accumulator, with_last
from .checkpoint import TrainingState, load_checkpoint, restore_rng, save_checkpoint
from .config import TrainConfig
from .metrics import all_reduce_max, all_reduce_sum, topk_correct
from .optim import EpochSchedule, build_optimizer
from .preemption import EpochPosition, PreemptionWatch, ResumePlan, preempt_checkpoint_name, resume_plan
from .resolution import eval_sizes
from .techniques import WorkerTechniques
from .uploads import CheckpointUploader

log = logging.getLogger(__name__)


def transform_config_of(config: TrainConfig, *, train: bool):
    """The crop settings of the training or validation stream (one place for the pipeline and
    the GPU decode path)."""
    from resnet_platform.data.pipeline import TransformConfig

    if train:  # the largest crop of a progressive schedule: the worker resizes to the epoch's size
        mean = NORMALIZATION_STATS[config.normalization][0]
        return TransformConfig(
            image_size=config.image_size,
            augmentation=config.augmentation,
            auto_augment=config.auto_augment,
            random_erase=config.random_erase,
            erase_fill=tuple(round(m * 255) for m in mean),
        )
    crop, _ = eval_sizes(config)  # the resize: --val-resize-size, else the 256/224 rule of the crop
    return TransformConfig(
        image_size=crop,
        resize_size=config.val_resize_size,
        augmentation=config.augmentation,
        ten_crop=config.ten_crop,
    )


def model_config_of(config: TrainConfig) -> dict:
    """What ``build_model`` needs to rebuild the network (stored with every checkpoint)."""
    options = {"stride": config.stride, "zero_init_residual": config.zero_init_residual}
    if config.shortcut is not None:
        options["shortcut"] = config.shortcut
    return {"arch": config.arch, "num_classes": config.num_classes, "options": options}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 on request, never on CPU (slower there, not faster)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class Normalizer(nn.Module):
    """uint8 NHWC -> float NCHW normalized, channels_last in memory when asked.

    ``permute`` of an NHWC tensor already has channels_last strides; ``contiguous`` with that
    format makes them exact (DDP warns about mismatched grad strides otherwise).
    """

    def __init__(
        self,
        device: torch.device,
        channels_last: bool,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.mean, self.std = channel_stats(mean, std, device)
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std).contiguous(memory_format=self.format)


@dataclass
class EpochStats:
    loss: float
    top1_error: float
    top5_error: float
    images: int
    seconds: float
    data_wait_s: float


def format_epoch(m: dict, epochs: int) -> str:
    ema = f"  EMA val top-1 err {m['ema_val_top1_error']:.4f}" if "ema_val_top1_error" in m else ""
    size = f"  at {int(m['train_image_size'])}px" if "train_image_size" in m else ""
    return (
        f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train top-1 err {m['train_top1_error']:.4f}  "
        f"val top-1 err {m['val_top1_error']:.4f}  top-5 err {m['val_top5_error']:.4f}{ema}  "
        f"({m['val_images']} val images)  {m['images_per_s']:.0f} img/s{size}  data wait {m['data_wait_s']:.1f}s  "
        f"lr {m['lr']:.4g}"
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def maybe_inject_fault(config: TrainConfig, rank: int, epoch: int, step_in_epoch: int) -> None:
    fault = config.fault
    if fault is None or fault.kind == "preempt":  # preemptions are injected by the PreemptionWatch
        return
    if fault.rank != rank or fault.epoch != epoch or fault.step != step_in_epoch:
        return
    if fault.marker:
        if Path(fault.marker).exists():
            return
        Path(fault.marker).write_text(f"fault fired at epoch {epoch} step {step_in_epoch}\n")
    log.warning("fault injection: %s at epoch %d step %d on rank %d", fault.kind, epoch, step_in_epoch, rank)
    if fault.kind == "exit":
        os._exit(1)
    raise RuntimeError(f"injected fault at epoch {epoch} step {step_in_epoch}")


def train_one_epoch(
    model,
    batches,
    criterion,
    optimizer,
    scaler,
    amp_dtype,
    normalize,
    device,
    config,
    ctx,
    plan: ResumePlan | None = None,
    carried: EpochPosition | None = None,
    at_boundary=None,
    techniques: WorkerTechniques | None = None,
    image_size: int | None = None,
    schedule: EpochSchedule | None = None,
):
    """One pass over the training shard. Loss and top-k counts accumulate on the device; the host
    reads them only at logging steps and once at the end (after the all-reduce).

    After a mid-epoch checkpoint, ``plan`` says where the epoch continues and ``carried`` holds its
    sums so far (added to this pass's). ``at_boundary(step_in_epoch, position_fn)`` runs on every
    worker after each optimizer step; ``position_fn()`` (a collective) returns the epoch's position
    there (``steps`` counts micro-batches, so a resume skips exactly the ones trained on).

    ``techniques`` (``train/techniques.py``) resizes each batch to ``image_size``, mixes it, and
    updates the EMA after each optimizer step; the optimizer steps once per ``grad_accum_steps``
    micro-batches (``train/accumulate.py``). ``ctx.state.step`` counts optimizer steps.

    While ``schedule`` is in its ResNet-110 low-rate phase, each optimizer step's global batch error
    is read (one all-reduce and host sync per step, in that phase only) and may end the phase
    (``EpochSchedule.observe_step_error``)."""
    model.train()
    plan = plan or ResumePlan()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    images = 0
    wait = 0.0
    accumulator = Accumulator(model, optimizer, scaler, config.grad_accum_steps)
    size = image_size or config.image_size
    start = tick = time.perf_counter()
    batches = iter(batches)
    for _ in range(plan.skip_batches):  # deterministic resume: the batches already trained on
        if next(batches, None) is None:
            break
    tick = time.perf_counter()
    trained = 0
    # Images and top-1 hits since the last optimizer step, counted during the low-rate phase only.
    warm_images, warm_hits = 0, torch.zeros((), dtype=torch.float64, device=device)

    def position() -> EpochPosition:
        total, loss_total, c1, c5 = all_reduce_sum([images, loss_sum, correct[0], correct[1]], device)
        seconds = all_reduce_max(time.perf_counter() - start, device)
        waited = all_reduce_max(wait, device)
        base = carried or EpochPosition(ctx.state.epoch, 0, 0, ctx.world, 0.0, 0.0, 0.0, 0.0, 0.0)
        return EpochPosition(
            epoch=ctx.state.epoch,
            steps=plan.start_step + trained,
            images=base.images + int(total),
            world_size=ctx.world,
            loss_sum=base.loss_sum + loss_total,
            correct1=base.correct1 + c1,
            correct5=base.correct5 + c5,
            seconds=base.seconds + seconds,
            data_wait_s=base.data_wait_s + waited,
        )

    for step_in_epoch, (batch, is_last) in enumerate(with_last(batches), start=plan.start_step):
        if plan.max_steps is not None and trained >= plan.max_steps:
            break
        wait += time.perf_counter() - tick
        maybe_inject_fault(config, ctx.rank, ctx.state.epoch, step_in_epoch)
        x, y = normalize(batch["image"]), batch["label"]
        target = hard = y
        if techniques is not None:
            x, target, hard = techniques.prepare(x, y, size, normalize.format)
        with accumulator.micro_step(is_last):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
                loss = criterion(logits, target)
            accumulator.backward(loss)
        n = y.shape[0]
        images += n
        loss_sum += loss.detach().double() * n
        hits = topk_correct(logits.detach(), hard)
        correct += hits
        trained += 1
        if schedule is not None and schedule.error_warmup:
            warm_images += n
            warm_hits += hits[0]
        if not accumulator.stepped:
            tick = time.perf_counter()
            continue
        ctx.state.step += 1
        if schedule is not None and schedule.error_warmup:
            seen, right = all_reduce_sum([warm_images, warm_hits], device)
            schedule.observe_step_error(1.0 - right / max(seen, 1.0))
            warm_images = 0
            warm_hits.zero_()
        if techniques is not None:
            techniques.after_step(ctx.state.step, ctx.state.epoch)
        if ctx.logger is not None and ctx.state.step % config.log_every_steps == 0:
            elapsed = time.perf_counter() - start
            ctx.logger.log_step(
                {
                    "train_loss": float(loss.detach()),
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s_worker": images / elapsed,
                },
                step=ctx.state.step,
            )
        if at_boundary is not None:
            at_boundary(step_in_epoch, position)
        tick = time.perf_counter()
    seconds = time.perf_counter() - start
    total, loss_total, c1, c5 = all_reduce_sum([images, loss_sum, correct[0], correct[1]], device)
    if carried is not None:  # the part of the epoch before the mid-epoch checkpoint
        total, loss_total = total + carried.images, loss_total + carried.loss_sum
        c1, c5 = c1 + carried.correct1, c5 + carried.correct5
        seconds, wait = seconds + carried.seconds, wait + carried.data_wait_s
    total = max(total, 1)
    return EpochStats(loss_total / total, 1 - c1 / total, 1 - c5 / total, int(total), seconds, wait)


@torch.no_grad()
def evaluate(model, batches, criterion, amp_dtype, normalize, device) -> EpochStats:
    """Every validation image counted once: per-worker sums, all-reduced (no padding, no drops).

    Ten-crop batches (N, 10, H, W, 3) average the softmax over the crops, as the paper does.
    """
    return evaluate_models({"": model}, batches, criterion, amp_dtype, normalize, device)[""]


@torch.no_grad()
def evaluate_models(models: dict, batches, criterion, amp_dtype, normalize, device) -> dict[str, EpochStats]:
    """:func:`evaluate` for several networks (the raw weights and their EMA) in one pass over the
    validation rows: ``{name: EpochStats}``."""
    nets = {name: unwrap(m).eval() for name, m in models.items()}
    loss_sum = {name: torch.zeros((), dtype=torch.float64, device=device) for name in nets}
    correct = {name: torch.zeros(2, dtype=torch.float64, device=device) for name in nets}
    images, wait = 0, 0.0
    start = tick = time.perf_counter()
    for batch in batches:
        wait += time.perf_counter() - tick
        images_u8, y = batch["image"], batch["label"]
        crops = images_u8.shape[1] if images_u8.ndim == 5 else 1
        x = normalize(images_u8.reshape(-1, *images_u8.shape[-3:]))
        for name, net in nets.items():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(x).float()
            if crops > 1:
                probs = logits.softmax(dim=1).view(-1, crops, logits.shape[1]).mean(dim=1)
                logits = probs.log()
            loss_sum[name] += criterion(logits, y).double() * y.shape[0]
            correct[name] += topk_correct(logits, y)
        images += y.shape[0]
        tick = time.perf_counter()
    seconds = time.perf_counter() - start
    out = {}
    for name in nets:
        total, loss_total, c1, c5 = all_reduce_sum(
            [images, loss_sum[name], correct[name][0], correct[name][1]], device
        )
        total_safe = max(total, 1)
        out[name] = EpochStats(
            loss_total / total_safe, 1 - c1 / total_safe, 1 - c5 / total_safe, int(total), seconds, wait
        )
    return out


def epoch_batches(
    shard, config: TrainConfig, device: torch.device, *, train: bool, shuffle_seed: int | None,
    image_size: int | None = None,
):  # fmt: skip
    """The worker's batches of one epoch, as uint8 NHWC + int64 labels on its device, in
    micro-batches (``per_worker_batch / grad_accum_steps`` rows).

    ``decode="cpu"``: Ray Data decoded them on the data nodes; they are copied to the device from
    pinned memory (non-blocking) with ``prefetch_batches`` in flight. ``decode="gpu"``: the rows are
    JPEG bytes, decoded and cropped here on the device (``data/device_decode.py``), training crops at
    ``image_size`` (the epoch's size of a progressive schedule).
    """
    shuffle = {"local_shuffle_buffer_size": config.shuffle_buffer or None, "local_shuffle_seed": shuffle_seed}
    if not train:
        shuffle = {}
    if config.decode == "gpu":
        from resnet_platform.data.device_decode import DeviceDecoder
        from resnet_platform.data.pipeline import skips_name_of

        transform = transform_config_of(config, train=train)
        if train and image_size is not None:
            transform = dataclasses.replace(transform, image_size=image_size)
        decoder = DeviceDecoder(
            transform,
            train=train,
            device=device,
            skips_name=skips_name_of(config.data, "train" if train else "val"),
        )
        raw = shard.iter_batches(
            batch_size=config.micro_batch_size,
            batch_format="numpy",
            prefetch_batches=config.prefetch_batches,
            **shuffle,
        )
        return decoder.batches(raw)
    return shard.iter_torch_batches(
        batch_size=config.micro_batch_size,
        dtypes={"image": torch.uint8, "label": torch.int64},
        prefetch_batches=config.prefetch_batches,
        pin_memory=device.type == "cuda",
        **shuffle,
    )


@dataclass
class WorkerContext:
    rank: int
    world: int  # the group's size now (an elastic group's changes between restarts)
    state: TrainingState
    logger: object | None


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


def train_loop_per_worker(config_dict: dict) -> None:
    quiet_train_worker()
    config = TrainConfig.from_dict(config_dict)
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
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
    # Elastic runs: the rate follows the global batch of this many workers (train/elastic.py).
    schedule = EpochSchedule(optimizer, config, lr_scale=elastic.lr_scale(config, world))
    amp_dtype = resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    normalize = Normalizer(device, config.channels_last, *NORMALIZATION_STATS[config.normalization])
    forward_model = torch.compile(model) if config.compile else model
    techniques = WorkerTechniques(config, unwrap(model), device)

    state = TrainingState()
    position = None  # set when resuming from a mid-epoch (preemption) checkpoint
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = load_checkpoint(directory, map_location=device)
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        if scaler is not None and saved["scaler"] is not None:
            scaler.load_state_dict(saved["scaler"])
        state = TrainingState(
            saved["epoch"], saved["step"], saved["best_val_top1_error"], list(saved["history"])
        )
        techniques.load_state_dict(saved)
        position = EpochPosition.from_dict(saved.get("position"))
        if rank == 0:
            restore_rng(saved["rng"])
        elif config.seed is not None:
            seed_everything(config.seed + rank + 1000 * state.epoch)
        where = f" and {position.steps} steps of epoch {state.epoch + 1}" if position else ""
        log.info("rank %d resumed after epoch %d%s (step %d)", rank, state.epoch, where, state.step)

    ctx = WorkerContext(rank, world, state, _open_logger(config, rank))
    if rank == 0:  # every group start: the first, each resize, each restart
        elastic.log_world_size(ctx.logger, world, state.step, config)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    uploader = CheckpointUploader(config.checkpoint_upload, rank)
    watch = PreemptionWatch(config, rank)

    def save_and_report(metrics: dict, name: str | None, position: EpochPosition | None = None) -> dict:
        """Rank 0 writes the checkpoint (``name`` given) to a local folder; every rank reports."""
        directory = None
        save_s = wait_s = 0.0
        if name is not None and rank == 0:
            t0 = time.perf_counter()
            uploader.wait()  # one upload in flight at most; the checkpoint then holds its timings
            wait_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            directory = tempfile.mkdtemp(prefix="resnet-ckpt-")
            save_checkpoint(
                directory,
                model=unwrap(model),
                optimizer=optimizer,
                schedule=schedule,
                scaler=scaler,
                state=state,
                config=config.to_dict(),
                model_config=model_config_of(config),
                position=position.to_dict() if position is not None else None,
                extra=techniques.state_dict(),
            )
            save_s = time.perf_counter() - t0
        report_s = wait_s + uploader.report(metrics, directory, name)
        return {"report_s": report_s, "checkpoint_save_s": save_s}

    def at_boundary(step_in_epoch: int, position_fn) -> None:
        if (step_in_epoch + 1) % config.log_every_steps == 0:
            uploader.poll()  # an epoch whose checkpoint is now stored goes to MLflow
        if not watch.due(step_in_epoch):
            return
        info = watch.check(state.epoch, step_in_epoch)
        if info is None:
            return
        from .preemption import describe

        here = position_fn()  # all-reduced: every rank is at this step
        name = preempt_checkpoint_name(state.epoch, state.step)
        if rank == 0:
            log.warning(
                "preemption pending on %s: checkpoint %s (epoch %d, %d steps, %d images into it)",
                describe(info),
                name,
                state.epoch + 1,
                here.steps,
                here.images,
            )
        # Ranked worst by val error (inf), so Ray's keep-best never prefers it; kept while it is the latest.
        metrics = {"epoch": state.epoch, "step": state.step, "val_top1_error": float("inf")}
        metrics[config.score_metric] = float("inf")  # the EMA's error with --register-ema
        metrics["preemption_checkpoint"] = 1.0
        save_and_report(metrics, name, here)
        uploader.wait()  # stored before the node goes: the restart resumes from here
        watch.after_checkpoint()

    try:
        for epoch in range(state.epoch, config.epochs):
            epoch_started_at = time.time()
            shuffle_seed = None if config.seed is None else config.seed * 1000 + epoch
            carried = position if position is not None and position.epoch == epoch else None
            plan = resume_plan(carried, config, world)
            position = None
            size = techniques.train_size(epoch)
            batches = epoch_batches(
                train_shard, config, device, train=True, shuffle_seed=shuffle_seed, image_size=size
            )
            train = train_one_epoch(
                forward_model,
                batches,
                criterion,
                optimizer,
                scaler,
                amp_dtype,
                normalize,
                device,
                config,
                ctx,
                plan=plan,
                carried=carried,
                at_boundary=at_boundary,
                techniques=techniques,
                image_size=size,
                schedule=schedule,
            )
            val_batches = epoch_batches(val_shard, config, device, train=False, shuffle_seed=None)
            evals = evaluate_models(
                techniques.eval_models(model), val_batches, criterion, amp_dtype, normalize, device
            )
            val = evals[""]
            if (
                rank == 0
            ):  # every worker has consumed its rows (the evaluation all-reduced): skips are recorded
                check_skip_budget(config.data, ("train", "val"), config.max_skipped_fraction)
            lr = schedule.lr
            schedule.step(val.top1_error, train.top1_error)
            state.epoch = epoch + 1
            state.best_val_top1_error = min(state.best_val_top1_error, val.top1_error)
            epoch_seconds = all_reduce_max(train.seconds, device)
            metrics = {
                "epoch": state.epoch,
                "step": state.step,
                "lr": lr,
                "train_loss": train.loss,
                "train_top1_error": train.top1_error,
                "train_top5_error": train.top5_error,
                "train_images": train.images,
                "val_loss": val.loss,
                "val_top1_error": val.top1_error,
                "val_top5_error": val.top5_error,
                "val_images": val.images,
                "epoch_time_s": epoch_seconds,
                "epoch_started_at": epoch_started_at,
                "images_per_s": train.images / max(epoch_seconds, 1e-9),
                "images_per_s_per_worker": train.images / max(epoch_seconds, 1e-9) / world,
                "data_wait_s": all_reduce_max(train.data_wait_s, device),
                "best_val_top1_error": state.best_val_top1_error,
                "workers": world,
            }
            if config.progressive_min_size is not None:
                metrics["train_image_size"] = size
            for prefix, stats in evals.items():
                if prefix:  # the EMA's validation, beside the raw weights'
                    metrics.update(
                        {
                            f"{prefix}val_loss": stats.loss,
                            f"{prefix}val_top1_error": stats.top1_error,
                            f"{prefix}val_top5_error": stats.top5_error,
                        }
                    )
            state.history.append({k: float(v) for k, v in metrics.items()})
            if rank == 0:  # a platform line: printed once, also when Ray's INFO lines are not
                log.info(format_epoch(metrics, config.epochs))
            save_now = state.epoch % config.checkpoint_every == 0 or state.epoch == config.epochs
            timing = save_and_report(metrics, f"checkpoint_epoch_{state.epoch:04d}" if save_now else None)
            row = state.history[-1]
            row.update(timing)  # reaches the checkpoints from the next one on, and MLflow below
            # The epoch goes to MLflow now, not once its checkpoint is stored: a worker stopped
            # right after ``report`` (Tune's early stop, a preemption restart) must not lose it. If
            # the upload then fails, the restart trains the epoch again and MLflow keeps the first
            # record of it (each epoch once). Durations only: the wall-clock stamps stay in the history.
            if ctx.logger is not None:
                ctx.logger.log_epoch(state.epoch, _durations(row), step=state.step)

            def log_upload(upload, row=row, step=state.step) -> None:
                # The upload's own timings, once it is stored (at the epoch's step).
                if upload is not None:
                    row.update(upload.stats())
                    if ctx.logger is not None:
                        ctx.logger.log_event(_durations(upload.stats()), step=step)

            uploader.after_upload(log_upload)
    except BaseException:
        # A failure in this process (not its death): the checkpoint already handed to the upload
        # thread still reaches storage and is registered before the group restarts.
        uploader.finish_quietly()
        raise
    uploader.wait()  # the last checkpoint stored (and its epoch logged) before the worker returns
    if ctx.logger is not None:
        ctx.logger.close()
