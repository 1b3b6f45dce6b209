"""prepare stage: import a labelled dataset and split it into train/validation/test through the task.

The source is never modified. The task module reads it and splits it (tasks/kinds/text_sources.py,
image_sources.py, token_sources.py) by the shared, stratified, *hash-ordered* rules of
tasks/kinds/splitting.py: re-running on the same data gives byte-identical outputs (DVC sees no change).
This module holds what the tasks' sources share: the table reader, the Hub dataset reader, and the
refusals, with a DataSourceError naming the file and the fix, of a source that cannot be read faithfully:
missing, empty, not UTF-8, malformed CSV quoting, or a DVC-tracked file changed behind DVC's back (each task
names its own ``sample://`` datasets, found by tasks/kinds/packaged.py). Judging the data is the validate
stage's job.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import logging
import lzma
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import yaml
from prefect import task

from tasks import caching
from tasks.config import Config, ConfigError, DataConfig, load_config
from tasks.kinds import load_task, task_of
from tasks.paths import SPLITS, ProjectPaths
from tasks.runtime import configure_environment, stage_logging

if TYPE_CHECKING:
    from tasks.kinds.base import TaskKind

log = logging.getLogger("transferline.prepare")

TEXT, LABEL = "text", "label"


class DataSourceError(ValueError):
    """The data source cannot be read; the message says which source and why."""


@dataclass(frozen=True)
class PreparedData:
    splits: dict[str, pd.DataFrame]
    source: str
    source_sha256: str
    dropped_duplicates: int

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {str(k): int(v) for k, v in df[LABEL].value_counts(dropna=False).sort_index().items()}
            for name, df in self.splits.items()
        }


# -- reading sources ---------------------------------------------------------------------------------


HF_DATASET = "hf-dataset://"


def read_hf_dataset(source: str) -> tuple[pd.DataFrame, str]:
    """Read ``hf-dataset://org/name@revision#split`` (the Hub, revision resolved to a commit SHA) or
    ``hf-dataset:///abs/folder#split`` (a dataset saved with ``save_to_disk``); returns (frame, identity).

    The identity is what the manifest records: the Hub commit SHA, or a sha256 over the saved files.
    ClassLabel columns are turned into their label names, so data.labels can name classes as words.
    """
    import datasets
    from huggingface_hub.utils import httpx

    ref, _, split = source.removeprefix(HF_DATASET).partition("#")
    split = split or "train"
    try:
        if ref.startswith("/"):
            folder = Path(ref)
            if not folder.is_dir():
                raise DataSourceError(f"data.source {source!r}: {folder} is not a saved dataset folder")
            loaded = datasets.load_from_disk(str(folder))
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            identity = hashlib.sha256(
                "".join(f"{p.relative_to(folder)} {file_sha256(p)}\n" for p in files).encode()
            ).hexdigest()
        else:
            from huggingface_hub import HfApi

            name, _, revision = ref.partition("@")
            if not revision:
                log.warning("data.source has no @revision: resolving 'main' and recording its commit SHA")
            identity = str(HfApi().dataset_info(name, revision=revision or "main", timeout=20).sha)
            loaded = datasets.load_dataset(name, revision=identity)
    except DataSourceError:
        raise
    except (OSError, httpx.HTTPError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataSourceError(
            f"data.source {source!r} could not be loaded: {type(err).__name__}: {err}. Offline? Save the "
            "dataset with `save_to_disk` and use hf-dataset:///that/folder"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataSourceError(f"data.source {source!r}: no split {split!r}; it has {', '.join(loaded)}")
        loaded = loaded[split]
    frame = loaded.to_pandas()
    for column, feature in loaded.features.items():
        if isinstance(feature, datasets.ClassLabel):  # ints -> the names the dataset gives them
            frame[column] = [
                feature.int2str(int(v)) if v is not None and v >= 0 else None for v in frame[column]
            ]
        elif isinstance(getattr(feature, "feature", None), datasets.ClassLabel):  # token tags: lists of ids
            names = feature.feature
            frame[column] = [[names.int2str(int(v)) for v in row] for row in frame[column]]
    if frame.empty:
        raise DataSourceError(f"data.source {source!r} has no rows in split {split!r}")
    return frame, identity


def read_table(path: Path, name: str | None = None) -> pd.DataFrame:
    """Read a CSV (optionally compressed), Parquet or JSONL file into a frame of strings.

    ``name`` is how messages refer to the file (e.g. its path relative to the project); default: path.
    Raises DataSourceError for a missing, empty, non-UTF-8 or malformed file.
    """
    name = name or str(path)
    _check_present(path, name)
    suffixes = [s.lower() for s in path.suffixes]
    is_csv = ".csv" in suffixes or ".tsv" in suffixes
    sep = "\t" if ".tsv" in suffixes else ","
    try:
        df = _read_format(path, name, suffixes, sep)
    except DataSourceError:
        raise
    except UnicodeDecodeError as err:
        raise DataSourceError(_not_utf8_message(path, name, err)) from None
    except pd.errors.EmptyDataError:
        raise DataSourceError(
            f"data source {name} has no content (no header, no rows): export the data again or point"
            " data.source at the right file"
        ) from None
    except pd.errors.ParserError as err:
        detail = _csv_structure_problem(path, sep) if is_csv else None
        raise DataSourceError(_malformed_message(name, detail or str(err).strip())) from None
    except Exception as err:  # pandas/pyarrow raise many types for unreadable files
        raise DataSourceError(f"data source {name} could not be read: {type(err).__name__}: {err}") from None
    if is_csv and _looks_misparsed(df):
        detail = _csv_structure_problem(path, sep)
        if detail is not None:
            raise DataSourceError(_malformed_message(name, detail))
    if df.empty:
        columns = ", ".join(map(str, df.columns))
        has = f"a header ({columns}) but no data rows" if columns else "no rows"
        raise DataSourceError(
            f"data source {name} has {has}: export the data again or point data.source at the right file"
        )
    return df


def _check_present(path: Path, name: str) -> None:
    """Raise DataSourceError, saying what to do, when the file is missing or has 0 bytes."""
    if not path.is_file():
        hint = (
            f"; it is tracked by DVC ({path.name}.dvc): run `dvc pull {name}` or `dvc checkout {name}`"
            if _dvc_file(path).is_file()
            else " (check data.source in params.yaml; relative paths start at the project folder)"
        )
        raise DataSourceError(f"data source {name} does not exist{hint}")
    if path.stat().st_size == 0:
        raise DataSourceError(
            f"data source {name} is empty (0 bytes): export the data again or point data.source at the"
            " right file"
        )


def _read_format(path: Path, name: str, suffixes: list[str], sep: str) -> pd.DataFrame:
    """The file read by the reader its suffixes name; CSV/TSV values stay strings ("NA" is not missing)."""
    if ".parquet" in suffixes:
        return pd.read_parquet(path)
    if ".jsonl" in suffixes or ".ndjson" in suffixes:
        return pd.read_json(path, lines=True, dtype=False)
    if ".csv" in suffixes or ".tsv" in suffixes:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    raise DataSourceError(f"data source {name}: unknown format; use .csv, .tsv, .parquet or .jsonl")


def _dvc_file(path: Path) -> Path:
    return path.with_name(path.name + ".dvc")


def _open_bytes(path: Path) -> io.BufferedIOBase | None:
    """The file's (decompressed) bytes as a stream, or None for a compression read_table can't reopen."""
    suffix = path.suffix.lower()
    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    if suffix in openers:
        return openers[suffix](path, "rb")
    if suffix in {".zip", ".zst", ".tar"}:
        return None
    return path.open("rb")


def _not_utf8_message(path: Path, name: str, err: UnicodeDecodeError) -> str:
    # pandas reports the position inside its read buffer, not in the file: decode the whole file ourselves
    # to find the first offending byte (only on this error path, so good files are never read twice).
    stream = _open_bytes(path)
    where = f"byte 0x{err.object[err.start]:02x}" if err.object else "a byte"
    if stream is not None:
        with stream:
            data = stream.read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as full:
            line_start = data.rfind(b"\n", 0, full.start) + 1
            line = data.count(b"\n", 0, full.start) + 1
            context = data[max(line_start, full.start - 30) : full.start + 1]
            where = (
                f"byte 0x{data[full.start]:02x} at offset {full.start} (line {line}, column"
                f" {full.start - line_start + 1}: ...{context!r})"
            )
            err = full
    source = "utf-16" if err.object[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"
    return (
        f"data source {name} is not UTF-8 text: {where} is not valid UTF-8 ({err.reason}). Re-encode the"
        f" file as UTF-8, e.g. `iconv -f {source} -t utf-8 {name} > {_sibling(name, '.utf8')}`"
        f" (use -f cp1252 for Windows exports), then point data.source at the result"
        + (" and `dvc add` it" if _dvc_file(path).is_file() else "")
    )


def _sibling(name: str, tag: str) -> str:
    path = Path(name)
    return path.with_name(f"{path.name.split('.')[0]}{tag}{''.join(path.suffixes)}").as_posix()


# A CSV with an unbalanced quote (a field that opens a quote and never closes it where it should) does not
# always make pandas fail: its C parser reads on, across line breaks, up to the next quote character in
# the file, and then carries on leniently. The swallowed records end up inside one giant field, or the
# record gets one field too many and pandas silently turns the first column into the index. So the rule:
# whenever the parsed frame *could* hide this -- a value (or index label) containing a line break, or an
# implicit index -- re-read the file with Python's csv module in strict mode, which rejects a closing
# quote not followed by a delimiter or line end and a quote still open at the end of the file, and check
# that every record has the header's number of fields. Legitimate multi-line quoted fields (the sample
# data has some) pass the strict re-read; files without line breaks in values are never read twice.


def _implicit(df: pd.DataFrame) -> bool:
    return not isinstance(df.index, pd.RangeIndex)


def _looks_misparsed(df: pd.DataFrame) -> bool:
    if _implicit(df):
        return True
    for column in df.columns:
        values = df[column]
        if (values.dtype == object or isinstance(values.dtype, pd.StringDtype)) and bool(
            values.astype("string").str.contains("[\r\n]", regex=True).fillna(False).any()
        ):
            return True
    return False


def _csv_structure_problem(path: Path, sep: str) -> str | None:
    """Where strict CSV parsing of path fails (a sentence), or None when it parses cleanly."""
    expected: int | None = None  # fields per record: the header's
    stream = _open_bytes(path)
    if stream is None:
        return None
    with stream:
        # Iterating the stream splits at \n, \r\n and \r only (str.splitlines would also split at U+0085).
        lines = list(io.TextIOWrapper(stream, encoding="utf-8", newline=""))
    reader = csv.reader(iter(lines), delimiter=sep, strict=True)
    start = 1
    limit = csv.field_size_limit(2**31 - 1)  # the default 128 KiB would fail long legitimate fields
    try:
        for record in reader:
            if not record:
                start = reader.line_num + 1
                continue
            if expected is None:
                expected = len(record)
            elif len(record) != expected:
                span = f"line {start}" if reader.line_num == start else f"lines {start}-{reader.line_num}"
                return (
                    f"the record on {span} has {len(record)} fields, the header has {expected}"
                    f" (line {start}: {_line(lines, start)})"
                )
            start = reader.line_num + 1
    except csv.Error as err:
        return (
            f"the record starting on line {start} has an unbalanced quote ({err}, noticed at line"
            f" {reader.line_num}; line {start}: {_line(lines, start)})"
        )
    finally:
        csv.field_size_limit(limit)
    return None


def _line(lines: list[str], number: int) -> str:
    text = lines[number - 1].rstrip("\r\n") if 0 < number <= len(lines) else ""
    return repr(text if len(text) <= 80 else text[:79] + "…")


def _malformed_message(name: str, detail: str) -> str:
    return (
        f"data source {name} is not a well-formed CSV: {detail}. A field that starts with a quote must end"
        ' with one, and quotes inside a quoted field must be doubled (""); fix that line or re-export the'
        " file with a CSV writer (e.g. pandas.DataFrame.to_csv)"
    )


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_dvc_tracked(path: Path, name: str) -> None:
    """When ``<file>.dvc`` sits beside the file (`dvc add`), refuse a file that no longer matches it.

    DVC 3 records the plain md5 of a file's bytes (``hash: md5``); DVC 2 .dvc files (no ``hash`` key)
    hashed text files with CRLF turned into LF, so for those either digest is accepted.
    """
    dvc_file = _dvc_file(path)
    if not dvc_file.is_file():
        return
    try:
        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []
        recorded = str(outs[0]["md5"])
        legacy = "hash" not in outs[0]
    except (yaml.YAMLError, AttributeError, LookupError, TypeError, UnicodeDecodeError):
        log.warning("%s: cannot read the recorded md5; not checking %s against it", dvc_file, name)
        return
    actual = file_md5(path)
    if actual == recorded:
        return
    if legacy:
        unix = path.read_bytes().replace(b"\r\n", b"\n")
        if hashlib.md5(unix, usedforsecurity=False).hexdigest() == recorded:
            return
    raise DataSourceError(
        f"{name} does not match the version recorded in {dvc_file.name} (md5 {actual} != {recorded}): it was"
        f" modified behind DVC's back; run `dvc add {name}` to record the change, or `dvc checkout {name}`"
        " to restore the recorded version"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the prepared splits: what the later stages read -----------------------------------------------------


def read_split(paths: ProjectPaths, split: str) -> pd.DataFrame:
    path = paths.split_file(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the prepare stage first")
    return pd.read_parquet(path)


def data_sha256(paths: ProjectPaths) -> str:
    """Identity of the prepared snapshot: sha256 over the split files' sha256 hashes."""
    lines = "".join(f"{split} {file_sha256(paths.split_file(split))}\n" for split in SPLITS)
    return hashlib.sha256(lines.encode()).hexdigest()


# -- stage shell ---------------------------------------------------------------------------------------


def run_prepare(paths: ProjectPaths, cfg: DataConfig, kind: TaskKind | None = None) -> PreparedData:
    """Read data.source, prepare it and write data/prepared/ (the split files, whatever files they point
    at, and manifest.json) through the task `kind` (default: text classification)."""
    kind = kind or load_task("text-classification", None)
    try:
        source = kind.read_source(cfg, paths.root)
    except ValueError as err:
        if isinstance(err, DataSourceError):
            raise
        raise DataSourceError(str(err)) from None  # the task's own source errors
    splits, dropped = kind.prepare(source, cfg)
    out = paths.prepared_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    splits = kind.write_snapshot(splits, out)
    data = PreparedData(
        splits=splits, source=cfg.source, source_sha256=source.identity, dropped_duplicates=dropped
    )
    manifest = {
        "source": data.source,
        "source_sha256": data.source_sha256,
        "dropped_duplicates": data.dropped_duplicates,
        "rows": {name: len(frame) for name, frame in data.splits.items()},
        "labels": data.counts(),
    }
    paths.prepared_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("prepared %s: %s", cfg.source, manifest["rows"])
    return data


def display_name(paths: ProjectPaths, path: Path, source: str) -> str:
    """The source as messages show it: relative to the project when inside it (what `dvc add` takes)."""
    if source.startswith("sample://"):
        return f"{source} ({path})"
    return str(paths.display(path.resolve()))


@task(name="prepare", cache_policy=caching.PREPARE)
def prepare_task(paths: ProjectPaths, cfg: Config) -> PreparedData:
    return run_prepare(paths, cfg.data, task_of(cfg))


def main() -> None:
    """DVC stage entry point: ``python -m tasks.prepare`` from the project root."""
    configure_environment()
    stage_logging()
    paths = ProjectPaths.at(".")
    try:
        cfg = load_config(paths.params)
        data = run_prepare(paths, cfg.data, task_of(cfg))
    except (ConfigError, DataSourceError) as err:
        print(f"prepare: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"prepare: {', '.join(f'{k}={len(v)}' for k, v in data.splits.items())} rows")


if __name__ == "__main__":
    main()
