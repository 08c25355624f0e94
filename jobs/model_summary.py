"""Print the model zoo as the paper's Tables 1 and 6: layers, params, GFLOPs, paper's figure."""

from __future__ import annotations

import argparse

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.models import list_archs
from resnet_platform.models.summary import format_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--archs", default="", help="comma-separated names (default: all but cifar 1202)")
    parser.add_argument("--stride", default="v1", choices=["v1", "v1.5"], help="bottleneck stride placement")
    args = parser.parse_args(argv)
    archs = args.archs.split(",") if args.archs else [a for a in list_archs() if not a.endswith("1202")]
    print(format_table(archs, stride=args.stride))


if __name__ == "__main__":
    main()
