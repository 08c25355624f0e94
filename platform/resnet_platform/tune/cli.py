"""Flags of ``jobs/sweep_resnet.py``: the search space, ASHA, trial resources, and the training
job's data, storage and tracking flags (every other training setting keeps its paper default)."""

from __future__ import annotations

import argparse

from resnet_platform.models import list_archs
from resnet_platform.settings import HelpFormatter, add_flags, values_from_args
from resnet_platform.train.cli import DATA_LIMIT_FLAGS, DATA_PATH_FLAGS
from resnet_platform.train.config import TrainConfig

from .space import SearchSpace, parse_list
from .sweep import SweepConfig

# The training settings a sweep exposes (the rest keep TrainConfig's defaults), and where its
# defaults differ from a single run's.
SHARED_TRAINING_FLAGS = (
    "data", "image_size", "augmentation", *DATA_PATH_FLAGS, *DATA_LIMIT_FLAGS,
    "epochs", "batch_size", "weight_decay", "lr_schedule",
    "warmup_epochs", "use_gpu", "cpus_per_worker", "seed", "storage", "experiment", "tracking_uri",
    "init_from", "freeze", "head_lr_factor",
)  # fmt: skip
SWEEP_DEFAULTS = {"lr_schedule": "cosine", "experiment": "resnet-sweeps"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sweep_resnet.py",
        description="Sweep ResNet depth x learning rate with Ray Tune (ASHA), one Ray Train run per trial.",
        formatter_class=HelpFormatter,
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

    # The training settings every trial shares: declared once, in TrainConfig.
    groups = add_flags(
        p,
        TrainConfig,
        groups={"data": "training data (shared by every trial)", "optimization": "training (shared by every trial)",
                "execution": "trial resources", "checkpoints": "storage and tracking", "tracking": "storage and tracking",
                "finetune": "fine-tuning (shared by every trial)"},
        only=SHARED_TRAINING_FLAGS,
        required=("data",),
        defaults=SWEEP_DEFAULTS,
        help_overrides={"epochs": "epochs per trial (ASHA's max_t)", "batch_size": "global batch (no grid)",
                        "storage": "where sweeps go (path or s3://)", "seed": "training seed of every trial"},
    )  # fmt: skip
    ex = groups["execution"]
    ex.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train (DDP) workers per trial")
    ex.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="trials at once: x workers-per-trial must fit the cluster",
    )
    ck = groups["checkpoints"]
    ck.add_argument("--name", default=None, help="sweep name (default: sweep-TIMESTAMP)")
    ck.add_argument(
        "--resume", action="store_true", help="continue the interrupted sweep --name at --storage"
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
    values = values_from_args(args, TrainConfig, only=SHARED_TRAINING_FLAGS)
    if space.batch_sizes:
        values["batch_size"] = space.batch_sizes[0]
    base = TrainConfig(arch=space.archs[0], num_workers=args.workers_per_trial, **values)
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
