"""Deduplicate, subsample and split a prepared frame by a task's key: the same rules for every task.

Each task names the column that says when two rows are the same example (text: the text up to case and
whitespace; images: the sha256 of the file's bytes). Rows are ordered inside each class by a seeded hash of
that key, so a row's split does not depend on file order and re-running on the same data gives identical
splits; once duplicates are dropped, no example can land in two splits (for images: no file content). Text
moved onto these rules without changing a byte of its splits (tests/unit/test_image_splitting.py pins them).
"""

from __future__ import annotations

import hashlib

import pandas as pd

from tasks.paths import SPLITS

LABEL = "label"


def _hash_order(keys: pd.Series, seed: int, salt: str) -> pd.Series:
    prefix = f"{seed}:{salt}:".encode()
    return keys.fillna("").astype(str).map(lambda k: hashlib.sha256(prefix + k.encode()).hexdigest())


def _by_class(frame: pd.DataFrame, key: str, seed: int, salt: str) -> list[pd.DataFrame]:
    """Rows grouped by label (null labels form their own group), each group in seeded hash order."""
    ordered = frame.assign(_h=_hash_order(frame[key], seed, salt)).sort_values(["_h"], kind="stable")
    groups = ordered[LABEL].fillna("\0")
    return [g.drop(columns="_h") for _, g in ordered.groupby(groups, sort=True)]


def drop_duplicates(frame: pd.DataFrame, key: str) -> tuple[pd.DataFrame, int]:
    """Keep the first row of each key; returns (frame, rows dropped)."""
    duplicated = frame[key].duplicated(keep="first")
    return frame[~duplicated].reset_index(drop=True), int(duplicated.sum())


def subsample(frame: pd.DataFrame, key: str, max_rows: int | None, seed: int) -> pd.DataFrame:
    """Stratified, deterministic subsample to at most max_rows rows (class shares preserved)."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    groups = _by_class(frame, key, seed, "subsample")
    parts = [g.head(max(1, round(len(g) * max_rows / len(frame)))) for g in groups]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def subsample_examples(frame: pd.DataFrame, keys: pd.Series, max_rows: int | None, seed: int) -> pd.DataFrame:
    """``subsample`` with each row's key given (a task's ``key(frame)``) instead of a column's name: what
    the strategy search and the evidence arms cut their training rows with, for any task."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    return subsample(frame.assign(_key=keys.to_numpy()), "_key", max_rows, seed).drop(columns="_key")


def split(
    frame: pd.DataFrame, key: str, val_size: float, test_size: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Stratified train/validation/test split: in each class the first rows in seeded hash order are test,
    the next validation; each split keeps source order (stable files, easy diffs) and every column."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    for group in _by_class(frame, key, seed, "split"):
        n_test = round(len(group) * test_size)
        n_val = round(len(group) * val_size)
        parts["test"].append(group.iloc[:n_test])
        parts["validation"].append(group.iloc[n_test : n_test + n_val])
        parts["train"].append(group.iloc[n_test + n_val :])
    return {name: pd.concat(frames).sort_index().reset_index(drop=True) for name, frames in parts.items()}
