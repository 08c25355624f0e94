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
import sys
import time

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import ensure_ray
from resnet_platform.jobrunner import config_from_flags, run_job
from resnet_platform.serving.serve import ServeConfig, start_serving
from resnet_platform.settings import HelpFormatter, add_flags
from resnet_platform.tracking.registry import pin_version, resolve_tracking_uri


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the usage examples in the description kept as written."""


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def serve_until_stopped(args: argparse.Namespace, config: ServeConfig) -> None:
    """Deploy, then wait; SIGTERM or Ctrl-C (raised here by the job runner) deletes the application."""
    from ray import serve

    pin_version(config.model, resolve_tracking_uri(config.tracking_uri))  # before Ray: one line if unknown
    ensure_ray(log_to_driver=False)
    url = start_serving(config)
    print(f"serving {config.model} at {url}", flush=True)
    if args.detach:
        return
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.delete(config.app_name)


def main(argv: list[str] | None = None) -> int:
    return run_job(
        build_parser(),
        config_from_flags(ServeConfig),
        serve_until_stopped,
        argv=argv,
        platform_level=logging.WARNING,
    )


if __name__ == "__main__":
    sys.exit(main())
