"""Flags of ``jobs/sweep_resnet.py``: the search space, ASHA, trial resources, and the training
job's data, storage and tracking flags (every other training setting keeps its paper default)."""

from __future__ import annotations

import argparse

from resnet_platform.models import list_archs
from resnet_platform.train.cli import DEFAULTS, add_data_path_flags, data_path_values
from resnet_platform.train.config import AUGMENTATIONS, LR_SCHEDULES, TrainConfig

from .space import SearchSpace, parse_list
from .sweep import SweepConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sweep_resnet.py",
        description="Sweep ResNet depth x learning rate with Ray Tune (ASHA), one Ray Train run per trial.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sp = p.add_argument_group("search space")
    sp.add_argument(
        "--archs",
        "--depths",
        dest="archs",
        default="",
        help=f"comma list of architectures, a grid (e.g. resnet18,resnet34 or cifar_resnet20,cifar_plain20); "
        f"bare depths 18,34 mean resnet18,resnet34. Known: {', '.join(list_archs())}",
    )
    sp.add_argument("--lr-min", type=float, default=None, help="log-uniform learning rate: lower bound")
    sp.add_argument("--lr-max", type=float, default=None, help="log-uniform learning rate: upper bound")
    sp.add_argument("--lrs", default=None, help="learning rates as a grid instead (comma list)")
    sp.add_argument(
        "--samples", type=int, default=1, help="draws per grid point (log-uniform lr) or grid repeats (--lrs)"
    )
    sp.add_argument("--weight-decays", default=None, help="weight decays as a grid (comma list)")
    sp.add_argument("--batch-sizes", default=None, help="global batch sizes as a grid (comma list)")
    sp.add_argument("--search-seed", type=int, default=None, help="seed of the learning-rate draws")

    sch = p.add_argument_group("early stopping (ASHA on validation top-1 error)")
    sch.add_argument("--grace-epochs", type=int, default=1, help="epochs every trial runs before a stop")
    sch.add_argument(
        "--reduction-factor", type=float, default=2.0, help="keep the best 1/N of trials at each rung"
    )

    ex = p.add_argument_group("trial resources")
    ex.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train (DDP) workers per trial")
    ex.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    ex.add_argument(
        "--cpus-per-worker",
        type=float,
        default=DEFAULTS["cpus_per_worker"],
        help="CPUs reserved per training worker; the rest decode images",
    )
    ex.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="trials at once: x workers-per-trial must fit the cluster",
    )
    ex.add_argument("--seed", type=int, default=None, help="training seed of every trial")

    tr = p.add_argument_group("training (shared by every trial)")
    tr.add_argument(
        "--data", required=True, help="dataset root written by prepare_imagenet.py (path or s3://)"
    )
    tr.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    tr.add_argument("--augmentation", choices=AUGMENTATIONS, default=DEFAULTS["augmentation"])
    tr.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="epochs per trial (ASHA's max_t)")
    tr.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="global batch (no grid)")
    tr.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"], help="(no grid)")
    tr.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine")
    tr.add_argument("--warmup-epochs", type=int, default=DEFAULTS["warmup_epochs"])
    add_data_path_flags(tr)

    ck = p.add_argument_group("storage and tracking")
    ck.add_argument("--storage", default=DEFAULTS["storage"], help="where sweeps go (path or s3://)")
    ck.add_argument("--name", default=None, help="sweep name (default: sweep-TIMESTAMP)")
    ck.add_argument(
        "--resume", action="store_true", help="continue the interrupted sweep --name at --storage"
    )
    ck.add_argument("--experiment", default="resnet-sweeps", help="MLflow experiment")
    ck.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    ck.add_argument("--register-best", default=None, help="register the best trial's model under this name")
    return p


def _arch_names(text: str) -> tuple[str, ...]:
    return tuple(f"resnet{a}" if a.isdigit() else a for a in parse_list(text))


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """Raises ValueError for an empty or invalid space, before anything starts."""
    space = SearchSpace(
        archs=_arch_names(args.archs),
        lrs=parse_list(args.lrs, float),
        lr_min=args.lr_min,
        lr_max=args.lr_max,
        samples=args.samples,
        weight_decays=parse_list(args.weight_decays, float),
        batch_sizes=parse_list(args.batch_sizes, int),
    )
    space.validate(args.workers_per_trial)
    base = TrainConfig(
        data=args.data,
        image_size=args.image_size,
        augmentation=args.augmentation,
        arch=space.archs[0],
        epochs=args.epochs,
        batch_size=space.batch_sizes[0] if space.batch_sizes else args.batch_size,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        num_workers=args.workers_per_trial,
        use_gpu=args.use_gpu,
        cpus_per_worker=args.cpus_per_worker,
        seed=args.seed,
        storage=args.storage,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        **data_path_values(args),
    )
    config = SweepConfig(
        base=base,
        space=space,
        name=args.name,
        grace_epochs=args.grace_epochs,
        reduction_factor=args.reduction_factor,
        max_concurrent=args.max_concurrent,
        register_best=args.register_best,
        resume=args.resume,
        search_seed=args.search_seed,
    )
    config.validate()
    return config
