"""The paper's degradation result: plain-20/56 against ResNet-20/56 at the same budget, over seeds.

    python jobs/degradation.py                                   # the demo's digits, 3 seeds
    python jobs/degradation.py --epochs 8 --seeds 0,1,2 --output degradation-results
    python jobs/degradation.py --data /data/cifar-10-python.tar.gz --epochs 30 --use-gpu
    ray job submit --address http://head:8265 --working-dir . -- \\
        python jobs/degradation.py --data s3://bucket/cifar-10-python.tar.gz --use-gpu \\
            --max-concurrent-trials 12 --storage s3://bucket/runs

A Ray Tune grid (one trial per net and seed) over the platform's training path with the paper's
CIFAR recipe scaled to --epochs. Writes figure6.png (training error dashed, test error bold; plain
left, ResNets right), figure6.json, table.md (Table 6-style, mean ± std over seeds, and whether the
paper's ordering holds) and results.json to --output, and logs them to a summary MLflow run; every
net is also its own tracked run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import add_verbose_flag
from resnet_platform.jobrunner import run_job
from resnet_platform.paper.degradation import FLAG_GROUPS, DegradationConfig, run_degradation
from resnet_platform.settings import HelpFormatter, add_flags, values_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="degradation.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    groups = add_flags(p, DegradationConfig, groups=FLAG_GROUPS)
    groups["output"].add_argument("--no-mlflow", action="store_true", help="do not track the grid")
    add_verbose_flag(groups["output"])
    return p


def run(args: argparse.Namespace, config: DegradationConfig) -> None:
    outcome = run_degradation(config)
    print(Path(outcome.files["table.md"]).read_text())
    for name, path in outcome.files.items():
        print(f"{name}: {path}")
    if outcome.summary_run_id:
        print(f"MLflow summary run: {outcome.summary_run_id}")


def main(argv: list[str] | None = None) -> int:
    return run_job(
        build_parser(),
        lambda args: DegradationConfig(track=not args.no_mlflow, **values_from_args(args, DegradationConfig)),
        run,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
