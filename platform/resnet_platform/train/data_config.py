"""How Ray Train splits the datasets: training shards equal, validation shards exact.

Ray Train's default ``DataConfig`` splits every dataset with ``streaming_split(equal=True)``,
which may drop rows to even the shards out. DDP needs that for training (equal step counts),
but validation must count every image exactly once, so it is split with ``equal=False`` and
the per-worker counts are summed afterwards.
"""

from __future__ import annotations

from ray.train import DataConfig

from resnet_platform._compat import data_config_execution_options, data_config_shard_locality


class ExactValidationDataConfig(DataConfig):
    def __init__(self, exact_datasets: tuple[str, ...] = ("val",), **kwargs) -> None:
        super().__init__(**kwargs)
        self._exact = set(exact_datasets)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        exact = {name: ds for name, ds in datasets.items() if name in self._exact}
        rest = {name: ds for name, ds in datasets.items() if name not in self._exact}
        output = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs)
        hints = worker_node_ids if data_config_shard_locality(self) else None
        for name, ds in exact.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = data_config_execution_options(self, name)
            for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                output[i][name] = split
        return output
