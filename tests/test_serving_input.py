"""What a served model accepts (tracking/inference.py): image bytes or base64 only, never a path, and
bounded rows, bytes and pixels per request. No server: these are the functions the pyfunc model and
the Ray Serve deployment call for every request."""

from __future__ import annotations

import base64
import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from resnet_platform.tracking.inference import (
    InputLimits,
    InputRejected,
    check_rows,
    image_from_request,
    open_image,
)


def _png(width: int = 40, height: int = 30) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with (almost) no pixel data behind it: what a
    decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_limits_are_frozen_with_the_documented_defaults():
    limits = InputLimits()
    assert (limits.max_rows, limits.max_image_bytes, limits.max_pixels) == (
        256,
        20 * 2**20,
        Image.MAX_IMAGE_PIXELS,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_rows = 10
    with pytest.raises(ValueError, match="max_rows"):
        InputLimits(max_rows=0)
    assert issubclass(InputRejected, ValueError)


def test_bytes_and_base64_are_read():
    raw = _png(40, 30)
    for value in (raw, bytearray(raw), memoryview(raw), base64.b64encode(raw).decode()):
        img = image_from_request(value, InputLimits())
        assert img.mode == "RGB" and img.size == (40, 30)
    wrapped = base64.encodebytes(raw).decode()  # 76-column lines: still base64
    assert image_from_request(wrapped, InputLimits()).size == (40, 30)


def test_paths_are_refused_and_never_opened(tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(_png())
    for path in (str(image), "/etc/hostname", "/etc/passwd1", "../secrets.json", "C:\\data\\x.jpg"):
        with pytest.raises(InputRejected, match="never opens paths"):
            image_from_request(path, InputLimits())
    # The trusted local reader (load_model(...).predict_topk, jobs/predict.py) still opens paths.
    assert open_image(str(image)).size == (40, 30)


def test_other_values_are_refused_with_one_line():
    with pytest.raises(InputRejected, match="not valid base64"):
        image_from_request("hello world!", InputLimits())
    with pytest.raises(InputRejected, match="not an image file"):
        image_from_request(base64.b64encode(b"just some text").decode(), InputLimits())
    with pytest.raises(InputRejected, match="cannot read an image from int"):
        image_from_request(42, InputLimits())
    with pytest.raises(InputRejected, match="not an image file in a format served"):
        image_from_request(
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", InputLimits()
        )  # Ghostscript
    truncated = _png(200, 200)[:400]
    with pytest.raises(InputRejected, match="damaged or truncated"):
        image_from_request(truncated, InputLimits())


def test_byte_limit_before_decoding():
    raw = _png(64, 64)
    limits = InputLimits(max_image_bytes=len(raw) - 1)
    with pytest.raises(InputRejected, match=f"limit is {len(raw) - 1} bytes"):
        image_from_request(raw, limits)
    with pytest.raises(InputRejected, match="limit is"):
        image_from_request(base64.b64encode(raw).decode(), InputLimits(max_image_bytes=len(raw) // 2))
    assert image_from_request(raw, InputLimits(max_image_bytes=len(raw))).size == (64, 64)


def test_pixel_limit_from_the_header():
    with pytest.raises(InputRejected, match="64x64 = 4096 pixels; the limit is 4095"):
        image_from_request(_png(64, 64), InputLimits(max_pixels=4095))
    # A header claiming 10,000 x 10,000 (beyond the default limit) is refused before decoding, and
    # one beyond Pillow's own bomb threshold too: a one-line InputRejected either way.
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(InputRejected, match="pixels"):
        image_from_request(_png_header_claiming(10_000, 10_000), InputLimits())
    with pytest.raises(InputRejected, match="pixels"):
        image_from_request(_png_header_claiming(30_000, 30_000), InputLimits())


def test_row_limit():
    check_rows(256, InputLimits())
    check_rows(0, InputLimits())
    with pytest.raises(InputRejected, match="257 images in one request; the limit is 256"):
        check_rows(257, InputLimits())
