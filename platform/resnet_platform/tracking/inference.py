"""A logged ResNet rebuilt for inference: spec (architecture + classes + preprocessing), weights, top-k.

Preprocessing is validation's own (``data/transforms.py``: the evaluation crop, the resize kernel, the
normalization), so a served model sees the pixels it was validated on. No pickled code is ever loaded:
the network is rebuilt with ``build_model(**spec)`` and the state dict read with
``torch.load(..., weights_only=True)``. Shared by :func:`~resnet_platform.tracking.load_model`
and the pyfunc model that ``mlflow models serve`` runs.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from resnet_platform.data import transforms
from resnet_platform.data.transforms import CIFAR10_MEAN, CIFAR10_STD, EVAL_CROPS, IMAGENET_MEAN, IMAGENET_STD
from resnet_platform.models import build_model, get_spec

# The pyfunc model's input: a DataFrame column of base64-encoded image files; ``params.k`` top classes.
INPUT_COLUMN = "image"
DEFAULT_K = 5
# Pillow's decompression-bomb threshold (89,478,485 pixels unless an application changed it).
_PILLOW_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


@dataclass
class ModelSpec:
    """Everything besides the weights needed to use a trained network.

    ``options`` are ``build_model`` keywords (``shortcut``, ``stride``, ``zero_init_residual``).
    Preprocessing at inference is validation's (``transforms.eval_crop``): with ``eval_crop``
    "center", resize the shorter side to ``resize_size`` and center-crop ``image_size``; with "whole"
    (CIFAR-style pad-crop models), resize the whole image to ``image_size`` square. Then normalize
    with ``mean``/``std`` (given on the [0, 1] scale; values above 1 are taken as 0-255). A spec
    written before ``eval_crop`` existed reads as "center", which is what it was served with.
    """

    arch: str
    num_classes: int
    options: dict = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    wnids: list[str] = field(default_factory=list)
    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    eval_crop: str = "center"

    def __post_init__(self) -> None:
        if self.eval_crop not in EVAL_CROPS:
            raise ValueError(f"eval_crop must be one of {EVAL_CROPS}, not {self.eval_crop!r}")

    @classmethod
    def for_arch(cls, arch: str, num_classes: int | None = None, **kw: Any) -> ModelSpec:
        """Defaults by family: ImageNet nets 256 -> 224 center crop; CIFAR nets the whole image at 32
        with CIFAR statistics (how the paper's pad-crop recipe validates them)."""
        spec = get_spec(arch)
        num_classes = spec.default_num_classes if num_classes is None else num_classes
        if spec.family == "cifar":
            cifar = {"image_size": 32, "resize_size": 32, "eval_crop": "whole"}
            kw = {**cifar, "mean": CIFAR10_MEAN, "std": CIFAR10_STD, **kw}
        return cls(arch=arch, num_classes=num_classes, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(x) for x in kw[k])
        return cls(**kw)

    @property
    def labels(self) -> list[str]:
        """Class names, or wnids, or ``"0".."N-1"``: always one label per output."""
        if len(self.class_names) == self.num_classes:
            return list(self.class_names)
        if len(self.wnids) == self.num_classes:
            return list(self.wnids)
        return [str(i) for i in range(self.num_classes)]

    def build(self) -> nn.Module:
        return build_model(self.arch, self.num_classes, **self.options)


def _scale(values: Sequence[float]) -> list[float]:
    return [v / 255.0 for v in values] if max(values) > 1.0 else list(values)


@dataclass(frozen=True)
class InputLimits:
    """What one request to a served model may carry: a bound on the work a client can make it do.

    ``max_rows`` images per request, ``max_image_bytes`` per encoded image file, ``max_pixels``
    (width x height) per image, checked from the header before the pixels are decoded. The pixel
    default is Pillow's own decompression-bomb threshold; Pillow refuses twice that by itself.
    """

    max_rows: int = 256
    max_image_bytes: int = 20 * 2**20
    max_pixels: int = _PILLOW_MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_image_bytes", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"InputLimits.{name} must be a positive integer, got {value!r}")


class InputRejected(ValueError):
    """A request the served model refuses: the message says why, in one line, for the client."""


def check_rows(n: int, limits: InputLimits) -> None:
    """Refuse a request holding more than ``limits.max_rows`` images."""
    if n > limits.max_rows:
        raise InputRejected(
            f"{n} images in one request; the limit is {limits.max_rows}: split it into smaller requests"
        )


def _looks_like_path(text: str) -> bool:
    """A string a client probably meant as a file name (only used to word the refusal)."""
    t = text.strip()
    return (
        t.startswith(("/", "./", "../", "~", "file:", "\\\\"))
        or bool(re.match(r"^[A-Za-z]:[\\/]", t))
        or bool(re.search(r"\.[A-Za-z]{2,5}$", t))
    )


_BASE64_TEXT = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_PATH_REFUSED = (
    "image strings must be base64-encoded image files; this looks like a file path, and the server "
    "never opens paths: send the file's bytes, base64-encoded"
)
# The formats a request may carry. Pillow's other plugins stay off for untrusted bytes (EPS, for
# one, runs Ghostscript).
REQUEST_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


def _decode_base64(text: str, limits: InputLimits) -> bytes:
    compact = "".join(text.split())  # base64 wrapped at 76 columns is still base64
    if len(compact) // 4 * 3 > limits.max_image_bytes + 3:  # bound the size before decoding
        raise InputRejected(
            f"image is about {len(compact) // 4 * 3} bytes; the limit is {limits.max_image_bytes} bytes"
        )
    if len(compact) % 4 == 0 and _BASE64_TEXT.match(compact):
        try:
            return base64.b64decode(compact, validate=True)
        except binascii.Error:
            pass
    if _looks_like_path(text):
        raise InputRejected(_PATH_REFUSED)
    raise InputRejected("image string is not valid base64: send the image file's bytes, base64-encoded")


def image_from_request(value: Any, limits: InputLimits) -> Image.Image:
    """An RGB image from one request value: image file bytes (bytes, bytearray, memoryview) or those
    bytes as base64 text. Never opens a path: a path string is refused (as every other string that
    is not base64). Size and pixel count are checked before the pixels are decoded.

    Raises :class:`InputRejected` with a one-line reason for anything it does not accept.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, str):
        raw = _decode_base64(value, limits)
    else:
        raise InputRejected(
            f"cannot read an image from {type(value).__name__}: send image file bytes, base64-encoded"
        )
    if len(raw) > limits.max_image_bytes:
        raise InputRejected(f"image is {len(raw)} bytes; the limit is {limits.max_image_bytes} bytes")
    try:
        img = Image.open(io.BytesIO(raw), formats=REQUEST_IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise InputRejected(f"image has too many pixels; the limit is {limits.max_pixels}") from e
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(value, str) and _looks_like_path(value):
            raise InputRejected(_PATH_REFUSED) from e
        raise InputRejected(
            f"not an image file in a format served ({', '.join(REQUEST_IMAGE_FORMATS)})"
        ) from e
    width, height = img.size
    if width * height > limits.max_pixels:
        raise InputRejected(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    try:
        img.load()
        return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise InputRejected(f"image has too many pixels; the limit is {limits.max_pixels}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputRejected(f"the {img.format or 'image'} file is damaged or truncated: {e}") from e


def open_image(image: Any) -> Image.Image:
    """PIL image from a PIL image, a local path, raw file bytes, base64 text, or a uint8 HWC array.

    For trusted callers on their own machine (``load_model(...).predict_topk``, ``jobs/predict.py``):
    a ``str`` naming an existing file is opened. Served models use :func:`image_from_request`.
    """
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, Path) or (isinstance(image, str) and _is_file(image)):
        with Image.open(image) as f:
            img = f.copy()
    elif isinstance(image, bytes | bytearray | memoryview):
        img = Image.open(io.BytesIO(bytes(image)))
    elif isinstance(image, str):
        img = Image.open(io.BytesIO(base64.b64decode(image, validate=False)))
    elif isinstance(image, np.ndarray):
        img = Image.fromarray(image.astype(np.uint8))
    else:
        raise TypeError(f"cannot read an image from {type(image).__name__}")
    return img.convert("RGB")


def _is_file(text: str) -> bool:
    try:
        return len(text) < 4096 and Path(text).is_file()
    except (OSError, ValueError):  # base64 text: "file name too long", NUL bytes
        return False


class Preprocess:
    """image (PIL / path / bytes / base64 / uint8 HWC array) -> normalized float tensor [3, S, S]:
    validation's evaluation crop, resize and normalization (``data/transforms.py``)."""

    def __init__(
        self,
        image_size: int,
        resize_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        eval_crop: str = "center",
    ):
        if eval_crop not in EVAL_CROPS:
            raise ValueError(f"eval_crop must be one of {EVAL_CROPS}, not {eval_crop!r}")
        self.image_size = image_size
        self.resize_size = resize_size
        self.eval_crop = eval_crop
        self.mean, self.std = transforms.channel_stats(_scale(mean), _scale(std))

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Preprocess:
        return cls(spec.image_size, spec.resize_size, spec.mean, spec.std, spec.eval_crop)

    def __call__(self, image: Any) -> torch.Tensor:
        return self.normalize(torch.from_numpy(self.crop(image)))

    def crop(self, image: Any) -> np.ndarray:
        """The geometric half: the evaluation crop, resized -> uint8 HWC [S, S, 3].

        Split from :meth:`normalize` so batch inference can decode and crop on CPU data nodes and
        ship uint8 (4x fewer bytes) to the model, with the same arithmetic as ``__call__``."""
        pixels = torch.from_numpy(np.array(open_image(image), dtype=np.uint8)).permute(2, 0, 1)
        _, h, w = pixels.shape
        box = transforms.eval_crop(
            w, h, image_size=self.image_size, resize_size=self.resize_size, mode=self.eval_crop
        )
        return transforms.crop_resize(pixels, box, self.image_size).permute(1, 2, 0).numpy().copy()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 HWC [S, S, 3] or NHWC [N, S, S, 3] -> normalized float CHW / NCHW (on their device)."""
        return transforms.normalize(images, self.mean.to(images.device), self.std.to(images.device))


class Prediction(NamedTuple):
    index: int
    label: str
    probability: float


@dataclass
class LoadedModel:
    """A network in eval mode, its preprocessing and its class names."""

    model: nn.Module
    preprocess: Preprocess
    spec: ModelSpec

    @property
    def class_names(self) -> list[str]:
        return self.spec.labels

    @torch.no_grad()
    def predict_proba(self, images: Iterable[Any] | Any, batch_size: int = 64) -> torch.Tensor:
        """Softmax probabilities [N, num_classes] for images (anything ``Preprocess`` reads, or a
        ready float batch [N, 3, S, S])."""
        if isinstance(images, torch.Tensor) and images.dtype.is_floating_point:
            batches = [images]
        else:
            if not isinstance(images, list | tuple):
                images = [images]
            xs = [self.preprocess(im) for im in images]
            batches = [torch.stack(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)]
        device = next(self.model.parameters()).device
        outs = [torch.softmax(self.model(b.to(device)).float(), dim=1).cpu() for b in batches]
        return torch.cat(outs) if outs else torch.empty(0, self.spec.num_classes)

    def predict_topk(self, images: Iterable[Any] | Any, k: int = 5) -> list[list[Prediction]]:
        probs = self.predict_proba(images)
        k = min(k, probs.shape[1])
        top = probs.topk(k, dim=1)
        labels = self.class_names
        return [
            [Prediction(int(i), labels[int(i)], float(p)) for p, i in zip(ps, idx, strict=True)]
            for ps, idx in zip(top.values, top.indices, strict=True)
        ]


def normalize_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain CPU tensors with the DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes removed."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v.detach().to("cpu").contiguous() if isinstance(v, torch.Tensor) else v
    return out


def load_from_files(weights_path: str | Path, config_path: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuild the network from its JSON spec and load the weights with ``weights_only=True``."""
    spec = ModelSpec.from_dict(json.loads(Path(config_path).read_text()))
    model = spec.build()
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    return LoadedModel(model, Preprocess.from_spec(spec), spec)
