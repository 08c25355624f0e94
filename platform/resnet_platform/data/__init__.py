"""ImageNet folders -> Parquet shards -> Ray Data streams of uint8 batches.

The names below are imported on first use: a served model imports ``data.transforms`` (its
preprocessing) without Ray, pyarrow or boto3, which the serving environment does not have.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DatasetNotReadyError": "manifest",
    "Manifest": "manifest",
    "ShardInfo": "manifest",
    "SplitManifest": "manifest",
    "read_manifest": "manifest",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "TransformConfig": "pipeline",
    "build_split_dataset": "pipeline",
    "decode_failures": "pipeline",
    "label_names": "pipeline",
    "PrepareConfig": "prepare",
    "PrepareSummary": "prepare",
    "prepare_imagenet": "prepare",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
