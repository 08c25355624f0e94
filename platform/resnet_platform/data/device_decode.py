"""GPU decode: the training worker turns JPEG bytes into cropped uint8 batches on its own device.

On the fastest GPUs, CPU decoding (about 200 images/s per vCPU with RandomResizedCrop) would need
40-60 vCPUs per GPU to keep a ResNet-50 busy. With ``--decode gpu`` Ray Data only reads the shards
(bytes, labels and keys: cheap CPU work), and each worker decodes its batch itself:

1. every image's header is parsed (size only) and its crop drawn exactly as the CPU path draws it
   (``pipeline.draw_crop_for``: both paths train on one distribution; validation takes the center
   crop the same way);
2. only that crop window is decoded, for the whole batch in one nvImageCodec call with the GIL
   released: hardware JPEG engines, then CUDA, then CPU for what they refuse; without a GPU the
   CPU backend alone (``data/nvimgcodec_adapter.py``);
3. the windows are resized, flipped and laid out NHWC uint8 for the whole batch in a fixed number
   of torch ops, within 1 level of the CPU path's resize (``data/batched_resize.py``); training
   crops then get the same TrivialAugment/RandAugment/random erasing (``data/augment.py``), per image,
   only when one is configured.

The same code runs with device ``cpu``, which is how CI tests it. Undecodable images are skipped and
recorded in the split's skip record, as on the CPU path, and a bad image never costs its batch;
fallbacks and failures are counted per epoch (:attr:`DeviceDecoder.counts`) and logged once.

:meth:`DeviceDecoder.batches` decodes ahead of the training step on one loader thread with its own
CUDA stream; the training stream waits for each batch on the device (an event), never the host.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from resnet_platform.data import augment
from resnet_platform.data.batched_resize import crop_resize_batch
from resnet_platform.data.nvimgcodec_adapter import DecodeCounts, region_decoder
from resnet_platform.data.pipeline import draw_crop_for
from resnet_platform.data.skip_ledger import record_skips
from resnet_platform.data.transform_config import TransformConfig

log = logging.getLogger(__name__)


class DeviceDecoder:
    """``{"image": array of JPEG bytes, "label": ints[, "key"]}`` -> ``{"image": uint8 NHWC,
    "label": int64}`` on ``device``; rows that no decoder reads are dropped and recorded under
    ``skips_name``. ``region=False`` decodes whole images and crops in the resize (for measuring
    what region decode saves)."""

    def __init__(
        self,
        transform: TransformConfig,
        *,
        train: bool,
        device: str | torch.device,
        skips_name: str | None = None,
        rng: np.random.Generator | None = None,
        region: bool = True,
    ) -> None:
        if transform.augmentation == "pad-crop" or transform.ten_crop:
            raise ValueError("decode on the device supports rrc, scale and none (not pad-crop or ten-crop)")
        self.transform = transform
        self.train = train
        self.device = torch.device(device)
        self.skips_name = skips_name
        self.rng = rng if rng is not None else np.random.default_rng()
        self.region = region
        self._codec = region_decoder(str(self.device))
        self.counts = DecodeCounts(first=self._codec.first)  # this decoder's, over its batches
        self._lock = threading.Lock()
        self._local = threading.local()  # the loader thread's CUDA stream

    @property
    def skipped(self) -> int:
        """Images skipped so far because no backend could decode them."""
        return self.counts.failed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One batch, in the calling thread, with the decoder's own generator."""
        return self._decode(batch, self.rng)

    def _decode(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        t, size = self.transform, self.transform.image_size
        labels = np.asarray(batch["label"], dtype=np.int64)
        parsed = self._codec.parse(batch["image"])
        crops = [
            None if p.stream is None else draw_crop_for(rng, p.width, p.height, t, self.train) for p in parsed
        ]
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        windows = [c.box if (c is not None and self.region) else None for c in crops]
        decoded, counts = self._codec.decode(parsed, windows, cuda_stream=stream)
        keep, failed = [], []
        for i, image in enumerate(decoded):
            if image is None:
                key = str(batch["key"][i]) if "key" in batch else f"row {i} of a batch"
                failed.append({"key": key, "reason": parsed[i].error or "no decoder backend could read it"})
            else:
                keep.append(i)
        with self._lock:
            self.counts.add(counts)
        if failed:
            log.warning("skipping %d undecodable image(s), e.g. %s", len(failed), failed[0]["key"])
            if self.skips_name is not None:
                record_skips(self.skips_name, failed)
        boxes = [
            (0, 0, decoded[i].shape[1], decoded[i].shape[0]) if self.region else crops[i].box for i in keep
        ]
        images = crop_resize_batch([decoded[i] for i in keep], boxes, [crops[i].flip for i in keep], size)
        images = images.to(self.device)  # a no-op but for an empty batch
        if self.train and augment.is_active(t.auto_augment, t.random_erase):
            images = torch.stack([t.augment(im.permute(2, 0, 1), rng).permute(1, 2, 0) for im in images])
        label_t = torch.from_numpy(labels[keep]).to(self.device, non_blocking=True)
        return {"image": images, "label": label_t}

    def batches(
        self, raw_batches: Iterable[dict[str, np.ndarray]], *, ahead: int = 2
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Decode a stream of raw batches (``DataIterator.iter_batches(batch_format="numpy")``) in
        order, up to ``ahead`` of them queued on the loader thread while the caller trains on the
        one before (``ahead=0``: in the calling thread). Each batch draws its crops from its own generator,
        spawned from the decoder's in stream order, so a seeded run stays reproducible."""
        if ahead <= 0:
            for raw in raw_batches:
                out = self._decode(raw, self._batch_rng())
                if len(out["label"]):
                    yield out
            self._log_counts()
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="device-decode")  # the loader thread
        pending: deque = deque()
        source = iter(raw_batches)
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < ahead:
                    raw = next(source, None)
                    if raw is None:
                        exhausted = True
                    else:
                        pending.append(pool.submit(self._decode_on_side_stream, raw, self._batch_rng()))
                if not pending:
                    self._log_counts()
                    return
                out = self._on_current_stream(*pending.popleft().result())
                if len(out["label"]):
                    yield out
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _log_counts(self) -> None:
        """One line per epoch, only when something fell back or failed."""
        if self.counts.fallbacks or self.counts.failed:
            log.info("%s decode: %s", "train" if self.train else "val", self.counts.summary())

    def _batch_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.rng.integers(2**63))

    def _decode_on_side_stream(self, raw: dict[str, np.ndarray], rng: np.random.Generator):
        if self.device.type != "cuda":
            return self._decode(raw, rng), None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            out = self._decode(raw, rng)
            done = torch.cuda.Event()
            done.record(stream)
        return out, done

    def _on_current_stream(self, out: dict[str, torch.Tensor], done) -> dict[str, torch.Tensor]:
        """The training stream waits (on the device, not the host) for the decode thread's kernels,
        and the caching allocator learns that the tensors are used there."""
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            for tensor in out.values():
                tensor.record_stream(current)
        return out
