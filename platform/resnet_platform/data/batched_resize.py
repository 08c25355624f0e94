"""One batched crop + resize + flip for a whole batch of differently sized images, in a fixed number
of torch ops (about fifteen, however many images), on any device.

The GPU decode path used to crop, resize and flip each image from a Python loop: about six kernel
launches per image, 1,500+ per 256-image batch, 25-35 ms holding the GIL. Here the images are
gathered into one padded batch (one ``cat`` and one index), and the antialiased bilinear resize is
written as what it is, a separable linear map: a per-image horizontal weight matrix (``S x W``,
which also holds the crop's offset and the flip) and a vertical one (``S x H``), applied as two
batched matmuls. The weights are those of ``torch.nn.functional.interpolate(mode="bilinear",
antialias=True, align_corners=False)`` (torchvision's antialiased resize; triangle filter widened
by the scale factor when downsampling, ``aten/src/ATen/native/cpu/UpSampleKernel.cpp``), and like
its uint8 CPU kernel (the CPU decode path's) the horizontal pass is rounded to uint8 before the
vertical one, so the result equals :func:`transforms.crop_resize` within 1 level per pixel
(``tests/test_device_decode.py``).

Float32 throughout: on a GPU, TF32 matmuls (``torch.backends.cuda.matmul.allow_tf32``) would round
the weights to 10 bits; :func:`crop_resize_batch` turns it off for its two matmuls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from resnet_platform.data.transforms import Box


def _aa_weights(
    starts: torch.Tensor, lengths: torch.Tensor, flips: torch.Tensor, out: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, out, width) weights and (N, 1, 1) scales: row ``i`` of image ``n`` holds the antialiased
    bilinear weights of output pixel ``i`` over source pixels ``starts[n] ... starts[n] +
    lengths[n] - 1`` (zero elsewhere, so padding and pixels outside the crop never count), rows
    reversed where ``flips``. Quantized as the uint8 CPU kernel quantizes them
    (``_compute_index_ranges_int16_weights``: integers, ``2**precision`` per unit, the precision
    the largest below 16 bits that the largest weight allows), so float32 sums of weights times
    pixels are exact integers (below 2**24) and the result is that kernel's bit for bit."""
    device = starts.device
    scale = (lengths.double() / out)[:, None, None]  # (N, 1, 1)
    support = torch.clamp(scale, min=1.0)  # the triangle's half-width in source pixels
    inv = 1.0 / support
    i = torch.arange(out, device=device, dtype=torch.float64)[None, :, None]
    i = torch.where(flips[:, None, None], out - 1 - i, i)
    center = scale * (i + 0.5)  # in crop coordinates
    p = torch.arange(width, device=device, dtype=torch.float64)[None, None, :] - starts[:, None, None]
    w = torch.clamp(1.0 - (p + 0.5 - center).abs() * inv, min=0.0)
    w = w * ((p >= 0) & (p < lengths[:, None, None]))
    w = w / w.sum(-1, keepdim=True)
    bits = torch.arange(16, device=device, dtype=torch.float64)
    too_big = torch.floor(0.5 + w.amax((1, 2))[:, None] * 2.0 ** (bits + 1)) >= 2**15  # (N, 16)
    precision = torch.where(too_big.any(1), too_big.double().argmax(1).double(), 15.0)
    unit = (2.0**precision)[:, None, None]
    return torch.floor(w * unit + 0.5).float(), unit.float()


def _to_uint8_levels(sums: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Integer sums of quantized weights times pixels -> pixel levels (float), rounded half up and
    clamped as the uint8 kernel does (``(sum + unit / 2) >> precision``)."""
    return sums.add_(unit / 2).div_(unit).floor_().clamp_(0, 255)


def pad_batch(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 HWC tensors of different sizes (one device) -> uint8 (N, 3, Hmax, Wmax), in a fixed
    number of ops: one ``cat`` of the flattened images and one gather (past an image's edge the
    gather repeats its last row/column; the resize weights are zero there)."""
    device = images[0].device
    hs = torch.tensor([im.shape[0] for im in images], dtype=torch.int64)
    ws = torch.tensor([im.shape[1] for im in images], dtype=torch.int64)
    offsets = torch.cumsum(hs * ws, 0) - hs * ws
    hmax, wmax = int(hs.max()), int(ws.max())
    flat = torch.cat([im.reshape(-1, 3) for im in images])  # (sum of pixels, 3)
    sizes = torch.stack([hs, ws, offsets]).to(device, non_blocking=True)
    h, w, off = (v[:, None, None] for v in sizes)
    ys = torch.minimum(torch.arange(hmax, device=device)[None, :, None], h - 1)
    xs = torch.minimum(torch.arange(wmax, device=device)[None, None, :], w - 1)
    return flat[off + ys * w + xs].permute(0, 3, 1, 2)  # (N, 3, H, W) view of (N, H, W, 3)


def crop_resize_batch(
    images: Sequence[torch.Tensor], boxes: Sequence[Box], flips: Sequence[bool], size: int
) -> torch.Tensor:
    """uint8 HWC images (any sizes, one device), each one's crop ``box`` (left, top, right, bottom in
    its pixels; the whole image for a region-decoded crop) and flip -> uint8 NHWC ``size`` x ``size``:
    :func:`transforms.crop_resize` of every image, batched."""
    if not images:
        return torch.zeros((0, size, size, 3), dtype=torch.uint8)
    device = images[0].device
    geometry = torch.tensor([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes], dtype=torch.int64)
    geometry = geometry.to(device, non_blocking=True)
    flip_t = torch.tensor(list(flips), dtype=torch.bool).to(device, non_blocking=True)
    no_flip = torch.zeros_like(flip_t)
    padded = pad_batch(images)
    n, c, hmax, wmax = padded.shape
    wx, unit_x = _aa_weights(geometry[:, 0], geometry[:, 2], flip_t, size, wmax)  # (N, S, W)
    wy, unit_y = _aa_weights(geometry[:, 1], geometry[:, 3], no_flip, size, hmax)  # (N, S, H)
    x = padded.to(torch.float32, memory_format=torch.contiguous_format).reshape(n, c * hmax, wmax)
    with _exact_float32_matmul(device):
        rows = torch.bmm(x, wx.transpose(1, 2))  # (N, C*H, S): the horizontal pass
        rows = _to_uint8_levels(rows, unit_x)  # uint8 between the passes, as the CPU kernel
        rows = rows.view(n, c, hmax, size).permute(0, 2, 1, 3).reshape(n, hmax, c * size)
        out = torch.bmm(wy, rows)  # (N, S, C*S): the vertical pass
    out = _to_uint8_levels(out, unit_y).to(torch.uint8).view(n, size, c, size)
    return out.permute(0, 1, 3, 2).contiguous()  # NHWC


@contextlib.contextmanager
def _exact_float32_matmul(device: torch.device):
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
