"""Make ``resnet_platform`` importable from a plain checkout (e.g. ``ray job submit --working-dir .``
on a cluster whose image lacks the package); a no-op where it is installed."""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent.parent / "platform")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
