"""Images in requests and scoring inputs: base64 in JSON, multipart uploads, a folder or a list of files.

Serving answers ``POST /predict`` with a JSON body ``{"images": ["<base64>", …]}`` (a ``data:image/…;base64,``
prefix is accepted) or a ``multipart/form-data`` upload with one file part per image. Every image goes
through the training loader (tasks/kinds/image_files.py), so the limits are the same everywhere: a request
with too many images or an image over the byte limit gets 413, a declared size over ``max_pixels`` (a
decompression bomb) 413 before any pixel is decoded, a part that is not a complete image 422 naming its
position. Errors never echo the input back.

``batch-predict`` takes a folder (every visible file below it, in name order), a text file with one image
path per line, or a CSV/Parquet/JSONL table with an image-path column; relative paths start at the list's
folder.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.kinds.base import RequestError
from tasks.kinds.image_files import ImageFileError, load_rgb

if TYPE_CHECKING:
    from PIL import Image as PILImage

JSON_FIELD = "images"
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
LIST_SUFFIXES = (".txt", ".lst")


class ImageRequestError(RequestError):
    """A request the service refuses: ``status`` is the HTTP 4xx code, ``detail`` says what to fix."""


@dataclass(frozen=True)
class ImageLimits:
    max_batch: int  # images per request
    max_image_bytes: int  # encoded bytes per image
    max_pixels: int  # declared width × height per image


def _from_json(body: bytes) -> list[bytes]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ImageRequestError(400, "the body is not valid JSON") from None
    items = data.get(JSON_FIELD) if isinstance(data, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise ImageRequestError(
            422, f'expected {{"{JSON_FIELD}": ["<base64 image>", …]}} with at least one image'
        )
    blobs = []
    for index, item in enumerate(items):
        try:
            blobs.append(base64.b64decode(_DATA_URL.sub("", item.strip()), validate=True))
        except (binascii.Error, ValueError):
            raise ImageRequestError(422, f"{JSON_FIELD}[{index}] is not valid base64") from None
    return blobs


def _from_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The file parts of a multipart/form-data body, in order (parsed with the standard library)."""
    if "boundary=" not in content_type:
        raise ImageRequestError(400, "multipart/form-data without a boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ImageRequestError(400, "the body is not a multipart/form-data message")
    blobs = [part.get_payload(decode=True) or b"" for part in message.iter_parts() if part.get_filename()]
    if not blobs:
        raise ImageRequestError(422, "no file parts in the upload: send each image as a file field")
    return blobs


def parse_request(body: bytes, content_type: str, limits: ImageLimits) -> list[PILImage.Image]:
    """The RGB images of a POST /predict body; ImageRequestError (400/413/422) for anything else."""
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        blobs = _from_multipart(body, content_type)
    elif media in ("application/json", ""):
        blobs = _from_json(body)
    else:
        raise ImageRequestError(415, f"unsupported content type {media!r}: send JSON or multipart/form-data")
    if len(blobs) > limits.max_batch:
        raise ImageRequestError(
            413, f"{len(blobs)} images exceed the limit of {limits.max_batch} per request"
        )
    images = []
    for index, blob in enumerate(blobs):
        if len(blob) > limits.max_image_bytes:
            raise ImageRequestError(
                413, f"image {index} has {len(blob):,} bytes, over {limits.max_image_bytes:,}"
            )
        try:
            images.append(load_rgb(blob, limits.max_pixels))
        except ImageFileError as err:
            status = 413 if err.kind == "too-large" else 422
            raise ImageRequestError(status, f"image {index} {err}") from None
    return images


def scoring_files(path: Path, column: str) -> list[Path]:
    """The images `batch-predict` scores: a folder's files, a list's lines or a table's `column`."""
    from tasks.prepare import DataSourceError, read_table

    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        refs = [line for line in lines if line and not line.startswith("#")]
    else:
        try:
            table = read_table(path)
        except DataSourceError as err:
            raise ValueError(str(err)) from None
        if column not in table.columns:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(map(str, table.columns))})")
        refs = [str(v) for v in table[column]]
    return [(path.parent / ref).resolve() for ref in refs]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
