"""ImageNet folders -> Parquet shards -> Ray Data streams of uint8 batches.

The names below are imported on first use: a served model imports ``data.transforms`` (its
preprocessing) without Ray, pyarrow or boto3, which the serving environment does not have.
"""

from resnet_platform._lazy import lazy_exports

_EXPORTS = {
    "DatasetNotReadyError": ".manifest",
    "Manifest": ".manifest",
    "ShardInfo": ".manifest",
    "SplitManifest": ".manifest",
    "read_manifest": ".manifest",
    "IMAGENET_MEAN": ".transforms",
    "IMAGENET_STD": ".transforms",
    "TransformConfig": ".pipeline",
    "build_split_dataset": ".pipeline",
    "decode_failures": ".pipeline",
    "label_names": ".pipeline",
    "PrepareConfig": ".prepare",
    "PrepareSummary": ".prepare",
    "prepare_imagenet": ".prepare",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
