"""Build the wheels that ``benchmarks/gpu_session.sh`` installs on a GPU machine with no package index.

    python benchmarks/slim_wheels.py            # -> benchmarks/wheels/ (git-ignored), about 10 MB

``--decode gpu`` needs nvImageCodec (a 25 MB wheel, 70 MB unpacked: Python modules for eight
interpreters, TIFF, JPEG 2000, OpenCV, BMP and PNM extensions) and ``libnvjpeg.so.13`` (the
``nvidia-nvjpeg`` wheel, 3.7 MB; torch's CUDA wheels do not carry it). The slim nvImageCodec wheel
keeps what the platform uses: its Python package, the core library, the nvJPEG and libjpeg-turbo
extensions, and the extension modules of CPython 3.10-3.13; its RECORD is rewritten so pip installs
it like the original. Both come from the versions pinned in ``constraints.txt`` (``pip download``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "wheels"
KEEP = re.compile(
    r"nvidia/nvimgcodec/(__init__\.py|libnvimgcodec\.so\.0"
    r"|nvimgcodec_impl\.cpython-31[0-3]-x86_64-linux-gnu\.so"
    r"|extensions/lib(nvjpeg|jpeg_turbo)_ext\.so\.[0-9.]+)$"
    r"|nvidia_nvimgcodec[^/]*\.dist-info/(?!RECORD$).*"
)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim(wheel: Path, out_dir: Path) -> Path:
    """A copy of the nvImageCodec ``wheel`` with only the files ``KEEP`` matches, and a new RECORD."""
    out = out_dir / wheel.name
    with (
        zipfile.ZipFile(wheel) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst,
    ):
        record, record_name = [], None
        for info in src.infolist():
            if info.filename.endswith(".dist-info/RECORD"):
                record_name = info.filename
            elif KEEP.match(info.filename):
                data = src.read(info)
                dst.writestr(info, data)
                record.append(_record_line(info.filename, data))
        assert record_name is not None, f"{wheel}: no RECORD"
        dst.writestr(record_name, "\n".join([*record, f"{record_name},,"]) + "\n")
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    pins = [
        line.strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.startswith(("nvidia-nvimgcodec-cu13==", "nvidia-nvjpeg=="))
    ]
    assert len(pins) == 2, f"constraints.txt should pin both wheels, found {pins}"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *pins], check=True
        )
        for old in OUT.glob("*.whl"):
            old.unlink()
        for wheel in Path(tmp).glob("*.whl"):
            made = (
                slim(wheel, OUT)
                if wheel.name.startswith("nvidia_nvimgcodec")
                else wheel.replace(OUT / wheel.name)
            )
            print(f"{made.relative_to(REPO)}: {made.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
