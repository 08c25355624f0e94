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
import os
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import add_verbose_flag, configure_output
from resnet_platform.serving.export import ExportConfig, ExportError, ParityError, export_model
from resnet_platform.settings import HelpFormatter, add_flags, values_from_args
from resnet_platform.storage import StorageError


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the usage example in the description kept as written."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = argparse.ArgumentParser(
        prog="export_model.py", description=__doc__, formatter_class=_HelpFormatter
    )
    groups = {"model": "model", "parity": "parity check", "output": "output"}
    add_flags(parser, ExportConfig, groups=groups, required=("model", "images"))
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    configure_output(args.verbose, platform_level=logging.WARNING)
    try:
        result = export_model(ExportConfig(**values_from_args(args, ExportConfig)))
    except (ExportError, StorageError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {str(err).splitlines()[0]}\n")
    except ParityError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print(result.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
