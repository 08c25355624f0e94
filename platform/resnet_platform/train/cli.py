"""Flags of ``jobs/train_imagenet.py``, grouped, every default the paper's recipe."""

from __future__ import annotations

import argparse
import dataclasses

from resnet_platform.models import list_archs

from .config import AMP_MODES, AUGMENTATIONS, DECODE_MODES, LR_SCHEDULES, TrainConfig

# Field defaults, read without building (and validating) a config.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def add_data_path_flags(group, *, decode: bool = True) -> None:
    """Where images are read and decoded: declared once for every job that trains."""
    group.add_argument(
        "--data-node-label",
        default=None,
        metavar="KEY=VALUE",
        help="label of the CPU data nodes (ray start --labels KEY=VALUE): reads and decodes run there, "
        "training workers never do",
    )
    group.add_argument(
        "--data-node-resource",
        default=None,
        help="custom resource of the CPU data nodes (e.g. data_cpu): every read and decode task asks for it",
    )
    if decode:
        group.add_argument(
            "--decode",
            choices=DECODE_MODES,
            default=DEFAULTS["decode"],
            help="cpu: Ray Data decodes on the data nodes; gpu: nvJPEG + crops on each training worker's device",
        )
        group.add_argument(
            "--prefetch-batches",
            type=int,
            default=DEFAULTS["prefetch_batches"],
            help="batches each worker has in flight ahead of the step",
        )


def data_path_values(args: argparse.Namespace) -> dict:
    """The TrainConfig fields of ``add_data_path_flags``."""
    names = ("data_node_label", "data_node_resource", "decode", "prefetch_batches")
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_imagenet.py",
        description="Train a ResNet with Ray Train DDP on sharded ImageNet (local folder or s3://).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data", required=True, help="dataset root written by prepare_imagenet.py (path or s3://)"
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=DEFAULTS["image_size"],
        help="crop size (smaller for small data sets)",
    )
    data.add_argument(
        "--augmentation",
        choices=AUGMENTATIONS,
        default=DEFAULTS["augmentation"],
        help="rrc: RandomResizedCrop+flip; scale: the paper's [256,480] scale augmentation; none",
    )
    add_data_path_flags(data)
    data.add_argument("--ten-crop", action="store_true", help="validate with the paper's 10-crop testing")
    data.add_argument(
        "--shuffle-buffer", type=int, default=DEFAULTS["shuffle_buffer"], help="local shuffle buffer (rows)"
    )

    model = p.add_argument_group("model")
    model.add_argument("--arch", default=DEFAULTS["arch"], help=f"one of: {', '.join(list_archs())}")
    model.add_argument(
        "--shortcut", choices=["A", "B", "C"], default=None, help="shortcut option (default: B, CIFAR A)"
    )
    model.add_argument(
        "--stride", choices=["v1.5", "v1"], default=DEFAULTS["stride"], help="bottleneck stride placement"
    )
    model.add_argument(
        "--zero-init-residual", action="store_true", help="zero the last BN of each residual branch"
    )

    opt = p.add_argument_group("optimization (defaults: the paper's recipe, section 3.4)")
    opt.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    opt.add_argument(
        "--batch-size", type=int, default=DEFAULTS["batch_size"], help="global batch, over all workers"
    )
    opt.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.1 x batch-size / 256)")
    opt.add_argument("--momentum", type=float, default=DEFAULTS["momentum"])
    opt.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    opt.add_argument("--no-bn-weight-decay", action="store_true", help="no weight decay on BN and biases")
    opt.add_argument("--label-smoothing", type=float, default=DEFAULTS["label_smoothing"])
    opt.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=DEFAULTS["lr_schedule"])
    opt.add_argument(
        "--lr-milestones", default=",".join(map(str, DEFAULTS["lr_milestones"])), help="step schedule epochs"
    )
    opt.add_argument("--lr-gamma", type=float, default=DEFAULTS["lr_gamma"], help="factor at each decay")
    opt.add_argument("--plateau-patience", type=int, default=DEFAULTS["plateau_patience"])
    opt.add_argument(
        "--warmup-epochs", type=int, default=DEFAULTS["warmup_epochs"], help="linear warmup (Goyal et al.)"
    )

    ex = p.add_argument_group("execution")
    ex.add_argument(
        "--num-workers",
        type=int,
        default=DEFAULTS["num_workers"],
        help="DDP workers (one GPU each with --use-gpu)",
    )
    ex.add_argument("--use-gpu", action="store_true")
    ex.add_argument(
        "--cpus-per-worker",
        type=float,
        default=DEFAULTS["cpus_per_worker"],
        help="CPUs reserved per training worker; the rest decode images",
    )
    ex.add_argument(
        "--amp", choices=AMP_MODES, default=DEFAULTS["amp"], help="auto: bf16 where supported, off on CPU"
    )
    ex.add_argument("--no-channels-last", action="store_true")
    ex.add_argument("--compile", action="store_true", help="torch.compile the model")
    ex.add_argument("--seed", type=int, default=None)
    ex.add_argument("--deterministic", action="store_true", help="ordered data, deterministic kernels")

    ck = p.add_argument_group("checkpoints and recovery")
    ck.add_argument(
        "--storage", default=DEFAULTS["storage"], help="where runs and checkpoints go (path or s3://)"
    )
    ck.add_argument("--name", default=None, help="run name (default: ARCH-TIMESTAMP)")
    ck.add_argument("--resume", action="store_true", help="continue the run --name at --storage")
    ck.add_argument(
        "--max-failures", type=int, default=DEFAULTS["max_failures"], help="worker-group restarts allowed"
    )
    ck.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULTS["checkpoint_every"],
        help="epochs between checkpoints",
    )
    ck.add_argument(
        "--keep-checkpoints", type=int, default=DEFAULTS["keep_checkpoints"], help="best K kept by val error"
    )

    tr = p.add_argument_group("tracking (MLflow)")
    tr.add_argument("--experiment", default=DEFAULTS["experiment"])
    tr.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    tr.add_argument("--register-as", default=None, help="register the best model under this name")
    tr.add_argument("--no-mlflow", action="store_true", help="do not track this run")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        image_size=args.image_size,
        augmentation=args.augmentation,
        ten_crop=args.ten_crop,
        shuffle_buffer=args.shuffle_buffer,
        **data_path_values(args),
        arch=args.arch,
        shortcut=args.shortcut,
        stride=args.stride,
        zero_init_residual=args.zero_init_residual,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        no_bn_weight_decay=args.no_bn_weight_decay,
        label_smoothing=args.label_smoothing,
        lr_schedule=args.lr_schedule,
        lr_milestones=tuple(int(m) for m in args.lr_milestones.split(",") if m),
        lr_gamma=args.lr_gamma,
        plateau_patience=args.plateau_patience,
        warmup_epochs=args.warmup_epochs,
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        cpus_per_worker=args.cpus_per_worker,
        amp=args.amp,
        channels_last=not args.no_channels_last,
        compile=args.compile,
        seed=args.seed,
        deterministic=args.deterministic,
        storage=args.storage,
        name=args.name,
        resume=args.resume,
        max_failures=args.max_failures,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        register_as=args.register_as,
    )
