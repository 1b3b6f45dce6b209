"""Opening image files safely: one loader for training, evaluation and serving, and the facts validation
checks.

Pillow reads a file's header lazily, so the pixel count is known before anything is decoded: a file that
declares more than ``max_pixels`` (a decompression bomb: a few kilobytes that decode to gigabytes) is refused
before decoding, and so are zero-byte files, files Pillow cannot identify, files whose structure fails
``Image.verify()`` (e.g. a PNG chunk with a wrong CRC) and files that end before their pixel data does
(truncated). Alpha is composited onto white and every mode is converted to RGB, so a grey, palette or RGBA
file gives the same 3-channel input a colour photo does; the EXIF orientation is applied, as a photo viewer
would.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image as PILImage

# Side of the thumbnail the brightness is measured on: the mean of a reduced image is the mean of the image
# up to resampling error, at a fraction of the cost for large photos.
BRIGHTNESS_SIDE = 64
WHITE = (255, 255, 255)


class ImageFileError(ValueError):
    """An image that must not be used; ``kind`` names the problem, the message says what was found."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # zero-bytes | missing | not-an-image | corrupt | truncated | too-large


@dataclass(frozen=True)
class ImageFacts:
    """What validation needs to know about one file; ``error`` is None for a usable image."""

    bytes: int
    format: str | None  # Pillow's name: PNG, JPEG, WEBP, …
    mode: str | None  # Pillow's mode of the stored pixels: L, RGB, RGBA, P, …
    width: int | None
    height: int | None
    brightness: float | None  # mean grey level in [0, 1]
    error: str | None  # the problem kind, e.g. "truncated"
    detail: str | None  # the sentence that explains it

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _open(data: Path | bytes, max_pixels: int) -> PILImage.Image:
    """The image, header read, pixels not yet decoded; refuses what is not an image or declares too many
    pixels."""
    from PIL import Image, UnidentifiedImageError

    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard warns (or raises) at its global limit; ours is the configured one.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except UnidentifiedImageError:
        raise ImageFileError("not-an-image", "not an image Pillow can identify") from None
    except Image.DecompressionBombError as err:
        raise ImageFileError("too-large", f"declares too many pixels: {err}") from None
    except OSError as err:
        raise ImageFileError("corrupt", f"cannot be opened: {err}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageFileError(
            "too-large",
            f"declares {width}×{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed"
            " (a decompression bomb, or a photo far larger than training needs)",
        )
    return image


def _decode(data: Path | bytes, max_pixels: int) -> PILImage.Image:
    """The fully decoded image: verified structure, every pixel read."""
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone switched Pillow to filling missing pixels with grey
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files would load silently")
    if _size(data) == 0:
        raise ImageFileError("zero-bytes", "is empty (0 bytes)")
    with _open(data, max_pixels) as probe:
        try:
            probe.verify()  # structure and checksums; leaves the image unusable, so it is opened again
        except Exception as err:  # Pillow raises many types from its format plugins
            raise ImageFileError(_kind(err), f"fails Pillow's integrity check: {err}") from None
    image = _open(data, max_pixels)
    try:
        image.load()
    except OSError as err:
        image.close()
        raise ImageFileError(_kind(err), f"cannot be decoded: {err}") from None
    return image


def _kind(err: Exception) -> str:
    """Pillow says "truncated" in its messages for files that end early; anything else is corrupt."""
    return "truncated" if "truncated" in str(err).lower() else "corrupt"


def load_rgb(data: Path | bytes, max_pixels: int) -> PILImage.Image:
    """The image as 8-bit RGB, EXIF orientation applied, alpha composited onto white.

    Raises ImageFileError for anything that is not a complete image within ``max_pixels``.
    """
    from PIL import Image, ImageOps

    image = _decode(data, max_pixels)
    with contextlib.suppress(Exception):  # a broken EXIF block is not a broken image
        image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def inspect_image(data: Path | bytes, max_pixels: int) -> ImageFacts:
    """Facts about one image file or its bytes; problems are recorded in ``error``, never raised."""
    size = _size(data)
    try:
        image = _decode(data, max_pixels)
    except ImageFileError as err:
        header = _header(data) if err.kind not in ("zero-bytes", "not-an-image") else None
        return ImageFacts(size, *(header or (None, None, None, None)), None, err.kind, str(err))
    with image:
        grey = image.convert("L")
        grey.thumbnail((BRIGHTNESS_SIDE, BRIGHTNESS_SIDE))
        histogram = grey.histogram()
        brightness = sum(i * n for i, n in enumerate(histogram)) / (255 * max(1, sum(histogram)))
        return ImageFacts(size, image.format, image.mode, image.width, image.height, brightness, None, None)


def _size(data: Path | bytes) -> int:
    return len(data) if isinstance(data, bytes) else data.stat().st_size


def _header(data: Path | bytes) -> tuple[str | None, str, int, int] | None:
    """(format, mode, width, height) from the header of a file that failed to decode, when readable."""
    from PIL import Image

    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                return image.format, image.mode, image.width, image.height
    except Exception:  # the header itself is broken: nothing to report beyond the error
        return None
