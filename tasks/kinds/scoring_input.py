"""What `batch-predict` reads: the input record every task returns, the error that says why a file cannot
be scored, and the table reader of the tasks whose inputs are texts (one column of a CSV, Parquet or JSONL
file). The batch scoring itself is tasks/scoring.py; the task modules build their input here, below it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

FORMATS = (".csv", ".parquet", ".jsonl")


class ScoringInputError(ValueError):
    """The input file cannot be scored as asked (missing, unknown format, no such column, empty texts)."""


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ScoringInputError(
            f"{path}: unknown format {suffix or '(none)'!r}; use one of {', '.join(FORMATS)}"
        )
    return suffix


@dataclass(frozen=True)
class ScoringInput:
    path: Path
    frame: pd.DataFrame
    sha256: str  # of exactly the bytes that were parsed
    column: str = "text"  # the column holding each row's input


def read_table(path: Path, text_column: str) -> ScoringInput:
    """The input rows and the sha256 of the bytes they were parsed from; raises ScoringInputError when
    the file or the text column is unusable."""
    if not path.is_file():
        raise ScoringInputError(f"{path}: no such file")
    fmt = file_format(path)
    data = path.read_bytes()
    try:
        if fmt == ".csv":
            frame = pd.read_csv(io.BytesIO(data), keep_default_na=False, dtype={text_column: str})
        elif fmt == ".parquet":
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            frame = pd.read_json(io.BytesIO(data), lines=True, dtype=False)  # a number is not a text
    except (ValueError, OSError) as err:  # pandas' and pyarrow's parser errors
        raise ScoringInputError(f"{path}: cannot be read as {fmt[1:]}: {err}") from None
    if text_column not in frame.columns:
        raise ScoringInputError(
            f"{path}: no column {text_column!r} (columns: {', '.join(map(str, frame.columns))}); "
            "name the text column with --text-column"
        )
    bad = [i for i, v in enumerate(frame[text_column]) if not isinstance(v, str) or not v.strip()]
    if bad:
        rows = ", ".join(str(i) for i in bad[:10]) + (" …" if len(bad) > 10 else "")
        raise ScoringInputError(
            f"{path}: {len(bad)} row(s) of {text_column!r} are empty or not text (rows {rows})"
        )
    if frame.empty:
        raise ScoringInputError(f"{path}: no rows to score")
    return ScoringInput(path, frame, hashlib.sha256(data).hexdigest(), text_column)
