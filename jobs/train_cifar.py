"""Train a CIFAR-10 net with the paper's recipe (section 4.2) on Ray Train DDP, tracked in MLflow.

    python jobs/train_cifar.py --data /data/cifar-10-python.tar.gz --arch cifar_resnet110
    ray job submit --address http://head:8265 --working-dir . -- \\
        python jobs/train_cifar.py --data s3://bucket/cifar-10-python.tar.gz --arch cifar_resnet56 \\
            --num-workers 1 --use-gpu --storage s3://bucket/runs

Defaults are the paper's: batch 128, lr 0.1 (0.01 until training error < 80% for 110 and deeper),
/10 at 32k and 48k iterations, stop at 64k, weight decay 1e-4, momentum 0.9, pad-crop-flip.
Iterations become epochs from the training-set size (391 steps per epoch on 50k: epochs 82/123/164).
``--data``: ``cifar-10-python.tar.gz``, its extracted ``cifar-10-batches-py/`` or a folder holding
either; path or URI. ``--val-split``: hold out 5k training images for validation (the paper's 45k/5k)
and report the test error of the best checkpoint; otherwise the test set is the validation set.
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import ensure_ray
from resnet_platform.errors import ConfigError
from resnet_platform.jobrunner import run_job
from resnet_platform.paper.recipe import CIFAR_RECIPE, PAPER_ITERATIONS, PAPER_MILESTONES, train_cifar
from resnet_platform.settings import HelpFormatter, add_flags, values_from_args
from resnet_platform.train.config import FLAG_GROUPS, TrainConfig
from resnet_platform.train.main import format_report

# The training settings this job exposes; their defaults are the paper's CIFAR recipe.
CIFAR_TRAIN_FLAGS = (
    "arch", "batch_size", "lr", "momentum", "weight_decay", "augmentation", "num_workers", "use_gpu",
    "cpus_per_worker", "data_node_label", "data_node_resource", "seed", "storage", "name", "resume",
    "max_failures", "checkpoint_every", "experiment", "tracking_uri", "register_as",
    "init_from", "freeze", "head_lr_factor",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_cifar.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    cifar = p.add_argument_group("CIFAR-10 (the paper's section 4.2)")
    cifar.add_argument("--data", required=True, help="CIFAR-10 python archive or folder (path or URI)")
    cifar.add_argument("--val-split", action="store_true", help="45k/5k train/validation split (seeded)")
    cifar.add_argument(
        "--iterations", type=int, default=PAPER_ITERATIONS, help="training length in iterations"
    )
    cifar.add_argument(
        "--milestones",
        default=",".join(map(str, PAPER_MILESTONES)),
        help="iterations at which the lr is divided by 10",
    )
    cifar.add_argument(
        "--epochs", type=int, default=None, help="override: epochs (milestones at 1/2 and 3/4)"
    )
    groups = add_flags(
        p,
        TrainConfig,
        groups=FLAG_GROUPS,
        only=CIFAR_TRAIN_FLAGS,
        defaults={**CIFAR_RECIPE, "arch": "cifar_resnet20", "num_workers": 1},
    )
    groups["tracking"].add_argument("--no-mlflow", action="store_true", help="do not track this run")
    return p


def check(args: argparse.Namespace) -> dict:
    """The training settings, range-checked (a TrainConfig is built from them), before Ray starts."""
    values = values_from_args(args, TrainConfig, only=CIFAR_TRAIN_FLAGS)
    TrainConfig(**values)
    for flag, value in (("--iterations", args.iterations), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    try:
        milestones = tuple(int(m) for m in args.milestones.split(",") if m)
    except ValueError:
        raise ConfigError(
            f"--milestones: expected a comma list of iterations, got {args.milestones!r}"
        ) from None
    return {"milestones": milestones, **values}


def train(args: argparse.Namespace, values: dict) -> None:
    ensure_ray()  # before the archive becomes Ray Data datasets, which would start Ray without the job's rules
    run = train_cifar(
        args.data,
        val_split=args.val_split,
        track=not args.no_mlflow,
        iterations=args.iterations,
        epochs=args.epochs,
        **values,
    )
    print(format_report(run.outcome))
    print(f"params: {run.params}  test error: {100 * run.test_error:.2f}%")
    if run.responses is not None:
        print("layer response std (3x3 layers): " + " ".join(f"{s:.3f}" for s in run.responses.stds))


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), check, train, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
