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
import logging
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.models import list_archs
from resnet_platform.paper.recipe import CIFAR_RECIPE, PAPER_ITERATIONS, PAPER_MILESTONES, train_cifar
from resnet_platform.train.cli import add_data_path_flags, data_path_values
from resnet_platform.train.main import format_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_cifar.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="CIFAR-10 python archive or folder (path or URI)")
    p.add_argument(
        "--arch", default="cifar_resnet20", choices=[a for a in list_archs() if a.startswith("cifar_")]
    )
    p.add_argument("--val-split", action="store_true", help="45k/5k train/validation split (seeded)")
    p.add_argument("--iterations", type=int, default=PAPER_ITERATIONS, help="training length in iterations")
    p.add_argument(
        "--milestones",
        default=",".join(map(str, PAPER_MILESTONES)),
        help="iterations at which the lr is divided by 10",
    )
    p.add_argument("--epochs", type=int, default=None, help="override: epochs (milestones at 1/2 and 3/4)")
    p.add_argument("--batch-size", type=int, default=CIFAR_RECIPE["batch_size"])
    p.add_argument("--lr", type=float, default=CIFAR_RECIPE["lr"])
    p.add_argument("--weight-decay", type=float, default=CIFAR_RECIPE["weight_decay"])
    p.add_argument("--momentum", type=float, default=CIFAR_RECIPE["momentum"])
    p.add_argument("--augmentation", choices=["pad-crop", "none"], default=CIFAR_RECIPE["augmentation"])
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    add_data_path_flags(p, decode=False)  # CIFAR rows are decoded already
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--storage", default="runs", help="where runs and checkpoints go (path or s3://)")
    p.add_argument("--name", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-failures", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--experiment", default=CIFAR_RECIPE["experiment"])
    p.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    p.add_argument("--register-as", default=None)
    p.add_argument("--no-mlflow", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run = train_cifar(
            args.data,
            val_split=args.val_split,
            track=not args.no_mlflow,
            iterations=args.iterations,
            milestones=tuple(int(m) for m in args.milestones.split(",") if m),
            epochs=args.epochs,
            arch=args.arch,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            momentum=args.momentum,
            augmentation=args.augmentation,
            num_workers=args.num_workers,
            use_gpu=args.use_gpu,
            cpus_per_worker=args.cpus_per_worker,
            seed=args.seed,
            storage=args.storage,
            name=args.name,
            resume=args.resume,
            max_failures=args.max_failures,
            checkpoint_every=args.checkpoint_every,
            experiment=args.experiment,
            tracking_uri=args.tracking_uri,
            register_as=args.register_as,
            **data_path_values(args),
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(format_report(run.outcome))
    print(f"params: {run.params}  test error: {100 * run.test_error:.2f}%")
    if run.responses is not None:
        print("layer response std (3x3 layers): " + " ".join(f"{s:.3f}" for s in run.responses.stds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
