"""GPU decode: the training worker turns JPEG bytes into cropped uint8 batches on its own device.

On the fastest GPUs, CPU decoding (about 200 images/s per vCPU with RandomResizedCrop) would need
40-60 vCPUs per GPU to keep a ResNet-50 busy. With ``--decode gpu`` Ray Data only reads the shards
(bytes and labels: cheap CPU work), and each worker decodes its batch with batched nvJPEG
(``torchvision.io.decode_jpeg(..., device="cuda")``), then crops, resizes and flips on the device.

The crop of every image is drawn exactly as the CPU path draws it (``pipeline.draw_crop_for``, from
``data/transforms.py``), and resized with the same kernel, so both paths train on the same
distribution of inputs; training crops then get the same TrivialAugment/RandAugment/random erasing
(``data/augment.py``), drawn from the same generator. The same code runs with device ``cpu``, which
is how it is tested without a GPU. Undecodable images are skipped and reported in the split's skip record, as on the CPU path.

:meth:`DeviceDecoder.batches` decodes ahead of the training step, on background threads (each on its
own CUDA stream): torchvision's batched nvJPEG runs its Huffman stage on the CPU and every crop is a
few kernel launches, so decoding in the training thread serialized that CPU work with the step
(measured on one H200, ResNet-50: 0.42x the synthetic ceiling; BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from resnet_platform.data import transforms
from resnet_platform.data.pipeline import TransformConfig, draw_crop_for
from resnet_platform.data.skip_ledger import record_skips

log = logging.getLogger(__name__)


class DeviceDecoder:
    """``{"image": array of JPEG bytes, "label": ints}`` -> ``{"image": uint8 NHWC, "label": int64}``
    on ``device``; rows that no decoder reads are dropped and recorded under ``skips_name``."""

    def __init__(
        self,
        transform: TransformConfig,
        *,
        train: bool,
        device: str | torch.device,
        skips_name: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if transform.augmentation == "pad-crop" or transform.ten_crop:
            raise ValueError("decode on the device supports rrc, scale and none (not pad-crop or ten-crop)")
        self.transform = transform
        self.train = train
        self.device = torch.device(device)
        self.skips_name = skips_name
        self.rng = rng if rng is not None else np.random.default_rng()
        self.skipped = 0
        self._lock = threading.Lock()
        self._local = threading.local()  # each decode thread's CUDA stream

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One batch, in the calling thread, with the decoder's own generator."""
        return self._decode(batch, self.rng)

    def _decode(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        datas = list(batch["image"])
        labels = np.asarray(batch["label"], dtype=np.int64)
        decoded = transforms.decode_rgb_batch(datas, self.device)
        size = self.transform.image_size
        crops, keep, failed = [], [], []
        for i, image in enumerate(decoded):
            if isinstance(image, Exception):
                key = str(batch["key"][i]) if "key" in batch else f"row {i} of a batch"
                failed.append({"key": key, "reason": f"{type(image).__name__}: {image}"})
                continue
            crop = draw_crop_for(rng, image.shape[2], image.shape[1], self.transform, self.train)
            out = transforms.crop_resize(image, crop, size)
            crops.append(self.transform.augment(out, rng) if self.train else out)
            keep.append(i)
        if failed:
            with self._lock:
                self.skipped += len(failed)
            log.warning("skipping %d undecodable image(s), e.g. %s", len(failed), failed[0]["key"])
            if self.skips_name is not None:
                record_skips(self.skips_name, failed)
        if crops:
            images = torch.stack(crops).permute(0, 2, 3, 1)  # NHWC, as the CPU path delivers it
        else:
            images = torch.zeros((0, size, size, 3), dtype=torch.uint8, device=self.device)
        label_t = torch.from_numpy(labels[keep]).to(self.device, non_blocking=True)
        return {"image": images, "label": label_t}

    def batches(
        self, raw_batches: Iterable[dict[str, np.ndarray]], *, ahead: int = 2
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Decode a stream of raw batches (``DataIterator.iter_batches(batch_format="numpy")``) in
        order, ``ahead`` of them at once on background threads while the caller trains on the one
        before (``ahead=0``: in the calling thread). Each batch draws its crops from its own generator,
        spawned from the decoder's in stream order, so a seeded run stays reproducible."""
        if ahead <= 0:
            for raw in raw_batches:
                out = self._decode(raw, self._batch_rng())
                if len(out["label"]):
                    yield out
            return
        pool = ThreadPoolExecutor(ahead, thread_name_prefix="device-decode")
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
                    return
                out = self._on_current_stream(*pending.popleft().result())
                if len(out["label"]):
                    yield out
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

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
