"""`make demo`: the whole pipeline on local defaults (grows with each stage of the platform)."""

from __future__ import annotations

from resnet_platform.models import list_archs
from resnet_platform.models.summary import format_table


def main() -> None:
    print("Model zoo (paper's Tables 1 and 6; bottleneck nets with the paper's v1 stride):")
    print(format_table([a for a in list_archs() if not a.endswith("1202")]))


if __name__ == "__main__":
    main()
