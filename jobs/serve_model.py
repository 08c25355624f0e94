"""Serve a registered model over HTTP with Ray Serve: request batching, replica autoscaling, alias following.

    python jobs/serve_model.py --model models:/digits-resnet20@champion --reload-on-alias-change
    curl -s -X POST --data-binary @cat.jpg http://127.0.0.1:8000/          # raw image bytes
    curl -s -H 'Content-Type: application/json' -d '{"images": ["<base64>"], "k": 3}' http://127.0.0.1:8000/

Binds 127.0.0.1 unless --host says otherwise. Runs until Ctrl-C (then the application is deleted);
with --detach it returns and leaves the application running on the cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)
from mlflow.exceptions import MlflowException

from resnet_platform.console import add_verbose_flag, configure_output
from resnet_platform.serving.serve import ServeConfig, start_serving
from resnet_platform.settings import HelpFormatter, add_flags, values_from_args


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the usage examples in the description kept as written."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = argparse.ArgumentParser(
        prog="serve_model.py", description=__doc__, formatter_class=_HelpFormatter
    )
    groups = {
        "model": "model",
        "http": "endpoint",
        "scaling": "replicas",
        "batching": "request batching",
        "limits": "input limits",
    }
    add_flags(parser, ServeConfig, groups=groups, required=("model",))
    parser.add_argument(
        "--detach", action="store_true", help="deploy and return; the application keeps running"
    )
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    config = ServeConfig(**values_from_args(args, ServeConfig))
    configure_output(args.verbose, platform_level=logging.WARNING)

    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", log_to_driver=False)
    try:
        url = start_serving(config)
    except (ValueError, MlflowException) as err:
        parser.exit(2, f"serve_model.py: error: {str(err).splitlines()[0]}\n")
    print(f"serving {config.model} at {url}", flush=True)
    if args.detach:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(config.app_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
