"""NVIDIA nvImageCodec 0.9 behind one small interface: the JPEG decoder of ``--decode gpu``.

Why nvImageCodec and not ``torchvision.io.decode_jpeg(device="cuda")``: torchvision holds one
process-wide mutex for a whole batched call and synchronizes the device at its start and end, and
cannot decode a crop window. nvImageCodec (the codec library under DALI 2.x) decodes a batch in one
call with the GIL released, on a CUDA stream we pass, without a host sync, and decodes only a
region of each image (``CodeStream.get_sub_code_stream(region=...)``): the RandomResizedCrop window
is on average about half the image, so the IDCT, colour conversion and writes roughly halve.

The backends are tried in order, each a decoder of its own, so that every fallback is counted:
with a GPU, the hardware JPEG engines (``HW_GPU_ONLY``: the NVJPG units of A100/H100/H200), then
the CUDA decoder (``GPU_ONLY``), then the CPU (libjpeg-turbo) for what both refuse (progressive,
CMYK, unusual subsampling); without one, the CPU backend alone (``NVIMGCODEC_DEVICE_CPU_ONLY``),
which is how CI runs the whole ``--decode gpu`` path. The CPU backend gives torchvision's
pixels (both are libjpeg-turbo with the same settings; ``tests/test_device_decode.py``).

The API moved between 0.x releases (``DecodeSource`` became ``get_sub_code_stream``): everything
version-specific lives here, pinned by ``constraints.txt``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from resnet_platform.data.transforms import Box

# Its logger prints one error line per undecodable image: the platform reports those itself, once.
QUIET = {"PYNVIMGCODEC_VERBOSITY": "0"}
BACKEND_ORDER = ("hardware", "cuda", "cpu")


@contextlib.contextmanager
def _silenced_fds():
    """stdout and stderr to /dev/null at the file-descriptor level, where C++ writes: its
    extensions print, whatever the verbosity, "Failed to load nvjpeg2k library! ..." for every GPU
    library that is not installed (nvJPEG2000, nvTIFF; and nvJPEG on a machine without CUDA), four
    lines of noise at import. Process-wide for that moment only, once per process."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


@functools.cache
def nvimgcodec():
    """The ``nvidia.nvimgcodec`` module, imported quietly (``PYNVIMGCODEC_VERBOSITY`` set by the
    user wins, and ``RESNET_PLATFORM_NVIMGCODEC_NOISE=1`` lets its import messages through)."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    quiet = os.environ.get("RESNET_PLATFORM_NVIMGCODEC_NOISE") != "1"
    try:
        with _silenced_fds() if quiet else contextlib.nullcontext():
            from nvidia import nvimgcodec as module
    except ImportError as e:
        raise RuntimeError(
            "--decode gpu needs nvImageCodec: pip install nvidia-nvimgcodec-cu13 -c constraints.txt"
        ) from e
    return module


@dataclass
class DecodeCounts:
    """What a decoder did: images decoded per backend (a later backend's images are the earlier
    ones' fallbacks) and images no backend could read. Added up per epoch by ``DeviceDecoder``."""

    first: str = BACKEND_ORDER[0]  # the backend every image is offered to first
    by_backend: Counter = field(default_factory=Counter)
    failed: int = 0

    @property
    def fallbacks(self) -> int:
        """Images a later backend decoded because an earlier one refused them."""
        return sum(n for name, n in self.by_backend.items() if name != self.first)

    def add(self, other: DecodeCounts) -> None:
        self.by_backend.update(other.by_backend)
        self.failed += other.failed

    def summary(self) -> str:
        decoded = ", ".join(f"{name} {n}" for name, n in sorted(self.by_backend.items()))
        return f"decoded by {decoded or 'none'}; {self.fallbacks} fallback(s), {self.failed} failure(s)"


@dataclass
class Parsed:
    """One image's header: its size and nvImageCodec's handle, or why it could not be read."""

    width: int = 0
    height: int = 0
    stream: object = None
    error: str = ""


class RegionDecoder:
    """JPEG (or PNG, BMP, ... as nvImageCodec reads them) bytes -> uint8 HWC RGB tensors on
    ``device`` of a region of each image. One per process and device (:func:`region_decoder`),
    used from one thread at a time (the loader thread)."""

    def __init__(self, device: torch.device, *, cpu_threads: int = 0) -> None:
        self.device = torch.device(device)
        self.cpu_threads = cpu_threads
        n = nvimgcodec()
        self._params = n.DecodeParams(apply_exif_orientation=False, color_spec=n.ColorSpec.SRGB)
        if self.device.type == "cuda":
            kinds = {
                "hardware": n.BackendKind.HW_GPU_ONLY,
                "cuda": n.BackendKind.GPU_ONLY,
                "cpu": n.BackendKind.CPU_ONLY,
            }
            self._stages = [(name, kinds[name]) for name in BACKEND_ORDER]
        else:
            self._stages = [("cpu", n.BackendKind.CPU_ONLY)]
        self._decoders: dict[str, object] = {}  # built on first use: a fallback may never be needed
        self.unavailable: dict[str, str] = {}  # backend -> why it could not be built
        self.first = self._stages[0][0]

    def _decoder(self, name: str, kind):
        if name not in self._decoders and name not in self.unavailable:
            n = nvimgcodec()
            on_gpu = self.device.type == "cuda"
            device_id = (self.device.index or 0) if on_gpu else n.NVIMGCODEC_DEVICE_CPU_ONLY
            try:
                self._decoders[name] = n.Decoder(
                    device_id=device_id, max_num_cpu_threads=self.cpu_threads, backends=[n.Backend(kind)]
                )
            except Exception as e:  # noqa: BLE001 - e.g. no NVJPG engine in this GPU or VM
                self.unavailable[name] = f"{type(e).__name__}: {e}"
        return self._decoders.get(name)

    def parse(self, datas: Sequence) -> list[Parsed]:
        """Each image's header (size, format), without decoding it; no copy of the bytes."""
        n = nvimgcodec()
        out = []
        for data in datas:
            try:
                stream = n.CodeStream(np.frombuffer(data, dtype=np.uint8))
                out.append(Parsed(int(stream.width), int(stream.height), stream))
            except Exception as e:  # noqa: BLE001 - reported per image by the caller
                out.append(Parsed(error=f"{type(e).__name__}: {e}"))
        return out

    def decode(
        self, parsed: Sequence[Parsed], boxes: Sequence[Box | None], *, cuda_stream: int = 0
    ) -> tuple[list[torch.Tensor | None], DecodeCounts]:
        """The ``boxes`` (left, top, right, bottom; None: the whole image) of the parsed images, in
        one batched call per backend that has work -> uint8 HWC tensors on the device, None where
        no backend read the image, and what each backend did. On CUDA the results are ordered on
        ``cuda_stream`` (no host sync)."""
        n = nvimgcodec()
        todo = []
        for i, (p, box) in enumerate(zip(parsed, boxes, strict=True)):
            if p.stream is None:
                continue
            stream = p.stream
            if box is not None and tuple(box) != (0, 0, p.width, p.height):
                left, top, right, bottom = box
                stream = stream.get_sub_code_stream(region=n.Region(top, left, bottom, right))
            todo.append((i, stream))
        out: list[torch.Tensor | None] = [None] * len(parsed)
        counts = DecodeCounts(first=self.first)
        for name, kind in self._stages:
            decoder = self._decoder(name, kind) if todo else None
            if decoder is None:
                continue
            images = decoder.decode([s for _, s in todo], params=self._params, cuda_stream=cuda_stream)
            left_over = []
            for (i, stream), image in zip(todo, images, strict=True):
                if image is None:
                    left_over.append((i, stream))
                else:
                    out[i] = self._as_tensor(image)
                    counts.by_backend[name] += 1
            if name == "hardware" and len(todo) >= 8 and not counts.by_backend[name]:
                # No engine visible (a VM without NVJPG, a GPU without one): stop offering it.
                self.unavailable[name] = f"decoded none of a batch of {len(todo)}"
                self._decoders.pop(name)
            todo = left_over
        counts.failed = len(todo) + sum(p.stream is None for p in parsed)
        return out, counts

    def _as_tensor(self, image) -> torch.Tensor:
        """Zero-copy: device images through ``__cuda_array_interface__`` (the tensor keeps the
        image alive), host images through the array interface; a CPU-backend image on a CUDA
        decoder is copied up."""
        if self.device.type == "cuda" and "STRIDED_DEVICE" in str(image.buffer_kind):
            return torch.as_tensor(image, device=self.device)
        tensor = torch.from_numpy(np.asarray(image))
        return tensor.to(self.device, non_blocking=True) if self.device.type == "cuda" else tensor


@functools.cache
def region_decoder(device: str, cpu_threads: int = 0) -> RegionDecoder:
    """The process's one decoder for ``device`` (its CUDA resources and thread pool are built once)."""
    return RegionDecoder(torch.device(device), cpu_threads=cpu_threads)
