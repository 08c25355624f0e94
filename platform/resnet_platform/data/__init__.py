"""ImageNet folders -> Parquet shards -> Ray Data streams of uint8 batches."""
