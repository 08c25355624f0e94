"""Reproduce the paper's CIFAR-10 experiments: plain against residual nets as a Ray Tune grid.

    python jobs/reproduce_paper.py --data /data/cifar-10-python.tar.gz --output paper-results
    ray job submit --address http://head:8265 --working-dir . -- \\
        python jobs/reproduce_paper.py --data s3://bucket/cifar-10-python.tar.gz --use-gpu \\
            --max-concurrent-trials 8 --depths 20,32,44,56,110 --storage s3://bucket/runs

Writes table6.md (params and test error beside the paper's Table 6), figure6.png (training error
dashed, test error bold, against iterations; plain left, ResNets right), figure7.png (std of the 3x3
layer responses) and results.json to --output, and logs them to a summary MLflow run; every net is
also its own tracked training run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.paper.reproduce import ReproduceConfig, reproduce
from resnet_platform.train.cli import add_data_path_flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproduce_paper.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 python archive or folder (path or URI)")
    p.add_argument("--depths", default="20,32,44,56", help="6n+2 depths (110 optional)")
    p.add_argument("--families", default="plain,resnet")
    p.add_argument("--epochs", type=int, default=None, help="default: the paper's 64k iterations")
    p.add_argument("--val-split", action="store_true", help="the paper's 45k/5k split")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=1, help="DDP workers per net")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    add_data_path_flags(p, decode=False)  # CIFAR rows are decoded already
    p.add_argument("--max-concurrent-trials", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", default="runs")
    p.add_argument("--name", default=None)
    p.add_argument("--output", default="paper-results")
    p.add_argument("--experiment", default="resnet-cifar10-paper")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-mlflow", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = ReproduceConfig(
            data=args.data,
            depths=tuple(int(d) for d in args.depths.split(",") if d),
            families=tuple(f for f in args.families.split(",") if f),
            epochs=args.epochs,
            val_split=args.val_split,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            use_gpu=args.use_gpu,
            cpus_per_worker=args.cpus_per_worker,
            data_node_label=args.data_node_label,
            data_node_resource=args.data_node_resource,
            max_concurrent_trials=args.max_concurrent_trials,
            seed=args.seed,
            storage=args.storage,
            name=args.name,
            output=args.output,
            experiment=args.experiment,
            tracking_uri=args.tracking_uri,
            track=not args.no_mlflow,
        )
        config.archs  # noqa: B018  (unknown depths fail here)
    except ValueError as err:
        parser.error(str(err))
    outcome = reproduce(config)
    print(Path(outcome.files["table6.md"]).read_text())
    for name, path in outcome.files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
