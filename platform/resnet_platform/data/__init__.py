"""ImageNet folders -> Parquet shards -> Ray Data streams of uint8 batches."""

from resnet_platform.data.manifest import (
    DatasetNotReadyError,
    Manifest,
    ShardInfo,
    SplitManifest,
    read_manifest,
)
from resnet_platform.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformConfig,
    build_split_dataset,
    decode_failures,
    label_names,
)
from resnet_platform.data.prepare import PrepareConfig, PrepareSummary, prepare_imagenet

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetNotReadyError",
    "Manifest",
    "PrepareConfig",
    "PrepareSummary",
    "ShardInfo",
    "SplitManifest",
    "TransformConfig",
    "build_split_dataset",
    "decode_failures",
    "label_names",
    "prepare_imagenet",
    "read_manifest",
]
