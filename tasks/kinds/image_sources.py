"""Image sources -> the prepared snapshot: a folder DVC versions, images as files, splits as parquet.

Sources (``data.source``):
  * a folder with one sub-folder per class (``data/raw/pets/cat/001.jpg``): the sub-folder names are the
    labels; every file below a class folder is taken, whatever its name (hidden files excepted), so a
    non-image is named by validation rather than skipped silently;
  * a CSV/Parquet/JSONL file with an image-path column (``image.column``, paths relative to the file) and a
    label column (``data.label_column``);
  * ``hf-dataset://…`` with an image column (Hub or ``save_to_disk`` folder, as for text);
  * ``sample://fashion-mnist`` (a stratified subset) or ``sample://fashion-mnist-full``.

The snapshot (``data/prepared/``) holds ``images/<sha256[:2]>/<sha256><ext>`` (each distinct file once,
named by its content) and one parquet file per split with, per image: its path inside the snapshot
(``image``), ``label``, ``sha256``, ``origin`` (where it came from, how reports name it) and the facts of
tasks/kinds/image_files.py (size, format, mode, brightness, and the problem if it cannot be used). As for
text, prepare keeps images it cannot decode, so that validation names them; it refuses only a source it
cannot read (missing, empty, a listed file that does not exist).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.kinds import splitting
from tasks.kinds.image_files import inspect_image
from tasks.paths import SPLITS

if TYPE_CHECKING:
    from tasks.config import DataConfig

log = logging.getLogger("transferline.image_sources")

IMAGE, LABEL, SHA256, ORIGIN = "image", "label", "sha256", "origin"
IMAGES_DIR = "images"  # inside the snapshot
SAMPLES = {"fashion-mnist": 600, "fashion-mnist-full": None}  # images per class (None: all)
_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
_MAX_LISTED = 5  # missing files named in an error


class ImageSourceError(ValueError):
    """The image source cannot be read; the message names it and says what to do."""


@dataclass(frozen=True)
class ImageSource:
    """What a reader found: one row per image with ``origin``, ``label`` and either ``file`` (an absolute
    path) or ``payload`` (the bytes, for sources that hold images inside another file)."""

    frame: pd.DataFrame
    identity: str  # sha256 of what was read (Hub sources: the commit SHA), recorded in the manifest
    name: str  # how messages name the source


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("".join(f"{line}\n" for line in lines).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


# -- readers --------------------------------------------------------------------------------------------


def read_folder(folder: Path, name: str) -> ImageSource:
    """One sub-folder per class; files directly in `folder` (a README, a licence) belong to no class and
    are left out with a warning naming them."""
    if not folder.is_dir():
        raise ImageSourceError(f"data source {name} is not a folder")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p, folder))
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and _visible(p, folder))
    if loose:
        log.warning("%s: files outside a class folder are not used: %s", name, ", ".join(loose))
    rows = []
    for class_dir in classes:
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and _visible(p, folder)):
            rows.append((path.relative_to(folder).as_posix(), class_dir.name, str(path)))
    if not rows:
        raise ImageSourceError(
            f"data source {name} has no images: expected one sub-folder per class holding image files"
        )
    frame = pd.DataFrame(rows, columns=[ORIGIN, LABEL, "file"]).assign(payload=None)
    identity = _digest([f"{origin} {_file_sha256(Path(file))}" for origin, _, file in rows])
    return ImageSource(frame, identity, name)


def read_listing(path: Path, image_column: str, label_column: str, name: str) -> ImageSource:
    """A table naming image files (relative to the table's folder, or absolute) and their labels.

    Raises ImageSourceError naming the first missing files: a snapshot cannot hold a file that is not there.
    """
    from tasks.prepare import DataSourceError, read_table

    try:
        table = read_table(path, name)
    except DataSourceError as err:
        raise ImageSourceError(str(err)) from None
    for key, column in (("image.column", image_column), ("data.label_column", label_column)):
        if column not in table.columns:
            raise ImageSourceError(
                f"data source {name} has no column {column!r} ({key}); its columns are:"
                f" {', '.join(map(str, table.columns))}"
            )
    refs = table[image_column].astype("string").str.strip()
    files = [None if pd.isna(r) or not r else str((path.parent / str(r)).resolve()) for r in refs]
    missing = [str(r) for r, f in zip(refs, files, strict=True) if f is None or not Path(f).is_file()]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:_MAX_LISTED]) + (
            " …" if len(missing) > _MAX_LISTED else ""
        )
        raise ImageSourceError(
            f"data source {name} lists {len(missing)} image file(s) that do not exist: {shown} (paths are"
            f" relative to {path.parent}); fix the paths in {image_column!r} or add the files"
        )
    frame = pd.DataFrame(
        {ORIGIN: refs.astype(str), LABEL: table[label_column], "file": files, "payload": None}
    )
    identity = _digest([_file_sha256(path), *(_file_sha256(Path(f)) for f in files if f)])
    return ImageSource(frame, identity, name)


def read_hf_images(source: str, image_column: str, label_column: str) -> ImageSource:
    """``hf-dataset://…`` whose `image_column` is an Image feature (bytes and/or a path per row)."""
    from tasks.prepare import DataSourceError, read_hf_dataset

    try:
        table, identity = read_hf_dataset(source)
    except DataSourceError as err:
        raise ImageSourceError(str(err)) from None
    for column in (image_column, label_column):
        if column not in table.columns:
            raise ImageSourceError(
                f"data source {source} has no column {column!r}; its columns are: {', '.join(table.columns)}"
            )
    payloads, files, origins = [], [], []
    for index, cell in enumerate(table[image_column]):
        data, file = _image_cell(cell)
        payloads.append(data)
        files.append(file)
        origins.append(f"{source}[{index}]")
    frame = pd.DataFrame({ORIGIN: origins, LABEL: table[label_column], "file": files, "payload": payloads})
    return ImageSource(frame, identity, source)


def _image_cell(cell: Any) -> tuple[bytes | None, str | None]:
    """(bytes, path) of one value of a datasets Image column: {"bytes": …, "path": …} when not decoded."""
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        if data:
            return bytes(data), None
        if path and Path(path).is_file():
            return None, str(path)
    if isinstance(cell, bytes | bytearray):
        return bytes(cell), None
    return b"", None  # nothing readable: kept, so validation names the row (zero bytes)


def read_sample(source: str) -> ImageSource:
    """``sample://fashion-mnist`` (a stratified subset) or ``sample://fashion-mnist-full``."""
    from tasks.kinds import fashion_mnist

    name = source.removeprefix("sample://")
    if name not in SAMPLES:
        raise ImageSourceError(
            f"data.source {source!r}: unknown image sample; available: {', '.join(SAMPLES)}"
        )
    try:
        images = fashion_mnist.load(SAMPLES[name])
    except fashion_mnist.SampleMissing as err:
        raise ImageSourceError(str(err)) from None
    frame = pd.DataFrame(
        {
            ORIGIN: [i.origin for i in images],
            LABEL: [i.label for i in images],
            "file": None,
            "payload": [i.png for i in images],
        }
    )
    return ImageSource(frame, _digest([hashlib.sha256(i.png).hexdigest() for i in images]), source)


def read_image_source(source: str, root: Path, image_column: str, label_column: str) -> ImageSource:
    """Dispatch ``data.source`` to its reader; relative paths start at the project root."""
    if source.startswith("sample://"):
        return read_sample(source)
    if source.startswith("hf-dataset://"):
        return read_hf_images(source, image_column, label_column)
    path = Path(source.removeprefix("file://"))
    path = path if path.is_absolute() else root / path
    name = os.path.relpath(path, root) if path.is_relative_to(root) else str(path)
    if path.is_dir():
        return read_folder(path, name)
    if not path.exists():
        raise ImageSourceError(f"data source {name} does not exist (check data.source in params.yaml)")
    return read_listing(path, image_column, label_column, name)


# -- prepare: hash, deduplicate, split, write the snapshot ---------------------------------------------


def _bytes_of(row: Any) -> bytes:
    return row.payload if row.payload is not None else Path(row.file).read_bytes()


def hash_images(source: ImageSource) -> pd.DataFrame:
    """The source's rows with ``sha256`` of each image's bytes (reading every file once)."""
    digests = [hashlib.sha256(_bytes_of(row)).hexdigest() for row in source.frame.itertuples(index=False)]
    return source.frame.assign(**{SHA256: digests})


def normalise_labels(frame: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Labels as stripped strings with data.label_map applied; unknown labels kept for validation."""
    labels = frame[LABEL].astype("string").str.strip()
    if cfg.label_map:
        mapping = {str(k).strip(): str(v) for k, v in cfg.label_map.items()}
        labels = labels.map(lambda v: mapping.get(v, v) if isinstance(v, str) else v).astype("string")
    return frame.assign(**{LABEL: labels.where(labels.notna(), None)})


def prepare_images(source: ImageSource, cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], int]:
    """Normalise labels -> hash -> drop repeated content -> subsample -> split; returns (splits, dropped).

    The splits still point at the source (``file``/``payload``); write_snapshot copies what they keep.
    """
    frame = hash_images(ImageSource(normalise_labels(source.frame, cfg), source.identity, source.name))
    dropped = 0
    if cfg.drop_duplicates:
        frame, dropped = splitting.drop_duplicates(frame, SHA256)
    frame = splitting.subsample(frame, SHA256, cfg.max_rows, cfg.seed)
    return splitting.split(frame, SHA256, cfg.val_size, cfg.test_size, cfg.seed), dropped


def _suffix(origin: str, image_format: str | None) -> str:
    if image_format in _SUFFIXES:
        return _SUFFIXES[image_format]
    suffix = Path(origin.split("[")[0]).suffix.lower()
    return suffix if suffix.isascii() and 1 < len(suffix) <= 6 else ".bin"


def write_snapshot(
    splits: dict[str, pd.DataFrame], out_dir: Path, max_pixels: int
) -> dict[str, pd.DataFrame]:
    """Copy each split's images into ``out_dir/images/`` and write ``<split>.parquet``; returns the frames
    as written (columns image, label, sha256, origin and the image facts). Replaces out_dir's contents."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    written: dict[str, pd.DataFrame] = {}
    for split_name in SPLITS:
        rows = []
        for row in splits[split_name].itertuples(index=False):
            data = _bytes_of(row)
            facts = inspect_image(data, max_pixels)
            relative = f"{IMAGES_DIR}/{row.sha256[:2]}/{row.sha256}{_suffix(row.origin, facts.format)}"
            target = out_dir / relative
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            rows.append(
                {IMAGE: relative, LABEL: row.label, SHA256: row.sha256, ORIGIN: row.origin, **facts.to_dict()}
            )
        frame = pd.DataFrame(rows, columns=[IMAGE, LABEL, SHA256, ORIGIN, *FACT_COLUMNS])
        frame.to_parquet(out_dir / f"{split_name}.parquet", index=False)
        written[split_name] = frame
    return written


FACT_COLUMNS = ("bytes", "format", "mode", "width", "height", "brightness", "error", "detail")
