"""Opening image files: complete images load as RGB; empty, non-image, corrupt, truncated and oversized
files are refused, each with its kind and a sentence, and the facts validation checks are recorded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tasks.kinds.image_files import ImageFileError, inspect_image, load_rgb
from tests.data.images import bad_crc, bomb_png, jpeg_bytes, noise, png_bytes, truncated

MAX_PIXELS = 1_000_000


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "zero-bytes"),
        (b"label,text\nfresh,a fine film\n", "not-an-image"),
        (truncated(png_bytes(noise(1, (64, 64)))), "truncated"),
        (truncated(jpeg_bytes(noise(2, (64, 64)))), "truncated"),
        (bad_crc(png_bytes(noise(3))), "corrupt"),
        (bomb_png(), "too-large"),
    ],
    ids=["empty", "csv", "truncated-png", "truncated-jpeg", "bad-crc", "decompression-bomb"],
)
def test_unusable_files_are_refused_with_their_kind(data, kind, tmp_path):
    with pytest.raises(ImageFileError) as caught:
        load_rgb(data, MAX_PIXELS)
    assert caught.value.kind == kind
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    facts = inspect_image(path, MAX_PIXELS)  # from a file, as validation reads the snapshot
    assert facts.error == kind and facts.detail and facts.bytes == len(data)
    assert facts.brightness is None


def test_a_bomb_is_refused_from_its_header_without_decoding():
    facts = inspect_image(bomb_png(12_000, 10_000), MAX_PIXELS)  # a 120-megapixel PNG of a few bytes
    assert (facts.error, facts.width, facts.height) == ("too-large", 12_000, 10_000)
    assert "120,000,000 pixels" in facts.detail


@pytest.mark.parametrize(
    ("mode", "pixels", "expected"),
    [
        ("L", np.full((4, 5), 200, np.uint8), (200, 200, 200)),
        ("RGB", np.tile(np.array([10, 20, 30], np.uint8), (4, 5, 1)), (10, 20, 30)),
        ("RGBA", np.tile(np.array([0, 0, 0, 0], np.uint8), (4, 5, 1)), (255, 255, 255)),  # transparent: white
        ("LA", np.tile(np.array([0, 255], np.uint8), (4, 5, 1)), (0, 0, 0)),
    ],
)
def test_every_mode_loads_as_rgb(mode, pixels, expected):
    image = load_rgb(png_bytes(pixels, mode=mode), MAX_PIXELS)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert tuple(np.asarray(image)[0, 0]) == expected


def test_exif_orientation_is_applied():
    pixels = noise(4, (10, 30))  # landscape as stored
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif)
    assert load_rgb(buffer.getvalue(), MAX_PIXELS).size == (10, 30)


def test_facts_of_a_good_image(tmp_path):
    path = tmp_path / "grey.png"
    path.write_bytes(png_bytes(np.full((12, 20), 51, np.uint8)))
    facts = inspect_image(path, MAX_PIXELS)
    assert (facts.format, facts.mode, facts.width, facts.height, facts.error) == ("PNG", "L", 20, 12, None)
    assert facts.brightness == pytest.approx(0.2)
