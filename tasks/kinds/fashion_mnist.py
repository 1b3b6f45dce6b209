"""The image sample: Zalando's Fashion-MNIST from the Debian package dataset-fashion-mnist.

70,000 grey 28×28 product photos in 10 classes (Expat licence), shipped as the original gzipped IDX files.
transferline imports them as PNG files (``sample://fashion-mnist``), a stratified subset by default so the
example retrains in minutes on a CPU; ``sample://fashion-mnist-full`` takes all of them. The subset is the
first images of each class in a fixed hash order of their pixels: the same images on every machine, for any
``data.seed`` (the seed then decides the split, as for any source).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
# (images, labels) per original part; the original train/test division is not kept: prepare splits.
PARTS = (
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class SampleMissing(FileNotFoundError):
    """The Debian package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class FashionImage:
    origin: str  # e.g. "train-images-idx3-ubyte.gz[41]": where the image came from
    label: str
    png: bytes


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped) as an array: magic 0 0 <type> <ndim>, ndim big-endian int32 sizes, the data."""
    import numpy as np

    with gzip.open(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=_IDX_TYPES[dtype_code], offset=4 + 4 * ndim).reshape(shape)


def _check_installed(directory: Path) -> None:
    missing = [name for part in PARTS for name in part if not (directory / name).is_file()]
    if missing:
        raise SampleMissing(
            f"the Fashion-MNIST sample needs the Debian package {DEBIAN_PACKAGE} ({directory}/ lacks"
            f" {', '.join(missing)}): run `make system-packages` or `sudo apt-get install {DEBIAN_PACKAGE}`"
        )


def _png(pixels: np.ndarray) -> bytes:
    """A grey PNG; no timestamp or other metadata, so the same pixels always give the same bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def load(per_class: int | None, directory: Path = DATASET_DIR) -> list[FashionImage]:
    """`per_class` images of every class (None: all 70,000) as PNG bytes, in a fixed order."""
    _check_installed(directory)
    chosen: list[tuple[str, int, str, np.ndarray]] = []  # (hash, class, origin, pixels)
    for images_file, labels_file in PARTS:
        images, labels = read_idx(directory / images_file), read_idx(directory / labels_file)
        if len(images) != len(labels):
            raise ValueError(f"{images_file}: {len(images)} images but {len(labels)} labels")
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            digest = hashlib.sha256(b"fashion-mnist:" + pixels.tobytes()).hexdigest()
            chosen.append((digest, int(label), f"{images_file}[{index}]", pixels))
    chosen.sort(key=lambda item: (item[1], item[0]))
    taken: dict[int, int] = {}
    out = []
    for _, label, origin, pixels in chosen:
        if per_class is not None and taken.get(label, 0) >= per_class:
            continue
        taken[label] = taken.get(label, 0) + 1
        out.append(FashionImage(origin, CLASSES[label], _png(pixels)))
    return out
