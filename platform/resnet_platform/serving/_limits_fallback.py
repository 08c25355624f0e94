"""DELETE AT REBASE (issue 17 waits on issue 13): a minimal stand-in for the serving input limits that
issue 13 adds to ``tracking/inference.py`` (``InputLimits``, ``InputRejected``, ``image_from_request``,
``check_rows``). ``serving/serve.py`` imports those names from ``tracking.inference`` first and falls back
here only while they are missing; once they are on main, delete this file and the fallback import.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class InputLimits:
    max_rows: int = 64
    max_image_bytes: int = 10 * 2**20
    max_pixels: int = 50_000_000


class InputRejected(ValueError):
    """A request the serving path refuses (too many rows, too large, not an image)."""


def check_rows(n: int, limits: InputLimits) -> None:
    if n < 1:
        raise InputRejected("no images in the request")
    if n > limits.max_rows:
        raise InputRejected(f"{n} images in one request; the limit is {limits.max_rows}")


def image_from_request(value: object, limits: InputLimits) -> Image.Image:
    """Raw image bytes or base64 text (never a path) -> RGB PIL image, within the limits."""
    if isinstance(value, str):
        if len(value) > limits.max_image_bytes * 4 // 3 + 4:
            raise InputRejected(f"image larger than {limits.max_image_bytes} bytes")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputRejected("image is not valid base64") from e
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise InputRejected(f"an image must be base64 text or bytes, not {type(value).__name__}")
    if len(data) > limits.max_image_bytes:
        raise InputRejected(f"image is {len(data)} bytes; the limit is {limits.max_image_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > limits.max_pixels:
            raise InputRejected(f"image is {w}x{h} pixels; the limit is {limits.max_pixels}")
        return img.convert("RGB")
    except InputRejected:
        raise
    except Exception as e:
        raise InputRejected(f"not a readable image ({type(e).__name__})") from e
