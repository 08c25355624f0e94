"""Export a registered model to ONNX and a torch.export program, with its preprocessing, checked for parity.

    python jobs/export_model.py --model models:/digits-resnet20@champion \\
        --images demo-output/digits-shards --output exported/

Writes model.onnx (dynamic batch, opset 18), model.pt2 (torch.export), preprocessing.json (input size,
resize, crop, mean/std, labels) and parity.json (ONNX Runtime and the program against torch on real
validation images: top-1 identical, logits within the stated tolerance), and logs them to the model
version's MLflow run under export/. A parity failure exits 1 after logging its result.
"""

from __future__ import annotations

import argparse
import logging
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.errors import MissingInputError
from resnet_platform.jobrunner import run_job
from resnet_platform.serving.export import ExportConfig, ParityError, export_model
from resnet_platform.settings import HelpFormatter, add_flags, values_from_args


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the usage example in the description kept as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_model.py", description=__doc__, formatter_class=_HelpFormatter
    )
    groups = {"model": "model", "parity": "parity check", "output": "output"}
    add_flags(parser, ExportConfig, groups=groups, required=("model", "images"))
    return parser


def export(args: argparse.Namespace, config: ExportConfig) -> int:
    try:
        result = export_model(config)
    except FileNotFoundError as err:  # a model folder or image set named by the user
        raise MissingInputError(str(err)) from err
    except ParityError as err:  # logged to the version's run already; the export is not to be used
        print(f"export_model.py: error: {err}", file=sys.stderr)
        return 1
    print(result.format())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(
        build_parser(),
        lambda args: ExportConfig(**values_from_args(args, ExportConfig)),
        export,
        argv=argv,
        platform_level=logging.WARNING,
    )


if __name__ == "__main__":
    sys.exit(main())
