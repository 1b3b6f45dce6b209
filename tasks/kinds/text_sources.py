"""Text sources -> the prepared splits: a table of texts and labels, normalised, deduplicated and split.

A source is a CSV/TSV/Parquet/JSONL file (read by the prepare stage's table reader), a ``sample://`` name or
an ``hf-dataset://`` dataset. Two texts are the same example when they are equal up to case and whitespace
(the dedupe key); the shared rules of tasks/kinds/splitting.py then drop repeats, subsample and split by a
seeded hash of that key, so a row's split does not depend on file order. Empty texts and unknown labels are
kept, so that validation names them.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tasks.kinds import splitting
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
    resolve_source,
)

if TYPE_CHECKING:
    from tasks.config import DataConfig
    from tasks.kinds.text import TextSource

log = logging.getLogger("transferline.prepare")
KEY = "_key"  # the dedupe key's column while splitting; never written


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
