"""`make demo`: the whole platform end to end on the embedded defaults, in a few minutes on a laptop.

scikit-learn's handwritten digits (a real data set bundled with the package: nothing is
downloaded) are written in ImageNet layout, prepared into Parquet shards, streamed by Ray Data
into a 2-worker Ray Train DDP run of ResNet-20, tracked in a local MLflow (SQLite), registered,
promoted to ``champion`` and pulled back by alias for predictions. Everything lands in
``demo-output/``; rerunning reuses the prepared shards.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import ensure_ray
from resnet_platform.errors import ConfigError
from resnet_platform.jobrunner import run_job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="demo-output", help="where data, runs and mlflow.db go")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument(
        "--recipe",
        default=None,
        help="train with a --recipe preset at the digits' scale (eval crop 32 px, batch 64, lr scaled "
        "linearly, EMA scaled to the data set); default: the demo's own settings below",
    )
    return parser


def check(args: argparse.Namespace) -> argparse.Namespace:
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    from resnet_platform.models import get_spec

    get_spec(args.arch)
    return args


def demo(args: argparse.Namespace, _: argparse.Namespace) -> None:
    from resnet_platform.data.digits import write_digits_imagenet
    from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet
    from resnet_platform.models.summary import format_table
    from resnet_platform.tracking.registry import load_model, promote
    from resnet_platform.train import TrainConfig
    from resnet_platform.train.main import format_report, train_and_track

    out = Path(args.output).resolve()
    started = time.monotonic()
    print("== 1. The paper's networks (Tables 1 and 6) ==")
    print(
        format_table(
            [
                "resnet18",
                "resnet34",
                "resnet50",
                "resnet101",
                "resnet152",
                "cifar_resnet20",
                "cifar_resnet56",
                "cifar_resnet110",
            ]
        )
    )

    print("\n== 2. A real data set in ImageNet layout: scikit-learn's digits as JPEG class folders ==")
    layout = write_digits_imagenet(out / "digits-imagenet")
    print(f"{layout.root}: {layout.train_images} train and {layout.val_images} val images, 10 classes")

    print("\n== 3. Prepare Parquet shards + manifest.json (jobs/prepare_imagenet.py) ==")
    # With its dashboard, as on any cluster: Ray Train's placement-group cleaner asks the state API
    # about the controller; without it, it repeats "Failed to query Ray Train Controller actor state".
    ensure_ray(num_cpus=2, include_dashboard=True)
    shards = str(out / "digits-shards")
    print(prepare_imagenet(PrepareConfig(source=str(layout.root), output=shards, shard_size_mb=0.25)))

    print(f"\n== 4. Train {args.arch}: Ray Data -> Ray Train DDP, 2 CPU workers (jobs/train_imagenet.py) ==")
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    common = dict(
        data=shards,
        arch=args.arch,
        epochs=args.epochs,
        num_workers=2,
        cpus_per_worker=0.5,
        storage=str(out / "runs"),
        seed=0,
        experiment="demo-digits",
        tracking_uri=tracking_uri,
        register_as="digits-resnet20",
    )
    if args.recipe is None:
        config = TrainConfig(
            image_size=32,
            batch_size=64,
            lr=0.1,
            lr_schedule="cosine",
            augmentation="none",  # the digits are centred 8x8 glyphs: random crops only hurt here
            **common,
        )
    else:
        from resnet_platform.train.recipes import describe, scaled_recipe

        config = scaled_recipe(
            args.recipe, eval_size=32, batch_size=64, train_images=layout.train_images, **common
        )
        print(describe(config))
    outcome = train_and_track(config)
    print(format_report(outcome))

    print("\n== 5. Registry: promote to @champion, pull back by alias, predict ==")
    promote(
        "digits-resnet20", outcome.model_version, "champion", only_if_better=True, tracking_uri=tracking_uri
    )
    loaded = load_model("models:/digits-resnet20@champion", tracking_uri=tracking_uri)
    samples = sorted((layout.root / "val").glob("*/*.JPEG"))[:: max(1, layout.val_images // 5)][:5]
    for path, top in zip(samples, loaded.predict_topk([str(p) for p in samples], k=3), strict=True):
        guesses = ", ".join(f"{p.label} {p.probability:.2f}" for p in top)
        print(f"{path.parent.name}/{path.name}: {guesses}")
    print(
        f"\nDone in {time.monotonic() - started:.0f}s. Browse the runs: mlflow ui --backend-store-uri {tracking_uri}"
    )


def main(argv: list[str] | None = None) -> int:
    # The demo narrates itself: the platform's own log lines from WARNING up, as Ray's and MLflow's.
    return run_job(build_parser(), check, demo, argv=argv, platform_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
