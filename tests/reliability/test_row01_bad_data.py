"""Row 1: bad input data stops the real retraining flow before training, with a message that says what
to fix (each test is one bad input in the reliability ledger).

One project is built per module and gets a champion (v1) from one good run. Each test then points
data.source at its own bad file inside that project, runs the real flow (Prefect, DVC, GX; no mocks) and
checks that it stops at prepare (DataSourceError: the source cannot be read faithfully) or at validate
(DataValidationError: the data is wrong), that no model version is registered, that no challenger weights
are written, and that the champion is still v1.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks.prepare import DataSourceError
from tasks.validate import DataValidationError
from tests.conftest import make_project, run, set_params
from tests.pipeline.test_retrain_flow import model_name, real_reviews, registry

pytestmark = [pytest.mark.pipeline, pytest.mark.bad_input(1)]

DVC = [sys.executable, "-m", "dvc"]
CHAMPION_RUN = {
    "data.max_rows": 200,
    "train.epochs": 1,
    "train.max_length": 32,
    "gate.min_accuracy": 0.0,
    "gate.max_latency_ms": 1e6,
}


@pytest.fixture(scope="module")
def refusing_project(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Path:
    """A project (as the `project` fixture builds it) whose first run on the tiny config made champion v1."""
    from flows.retrain import retrain

    proj = make_project(tmp_path_factory.mktemp("bad-inputs"))
    # The champion only has to exist: the smallest run that makes one, with a gate that a loaded machine
    # cannot fail on latency (overrides apply to this run only; params.yaml keeps the tiny config).
    first = retrain(project_dir=str(proj), overrides=CHAMPION_RUN)
    assert first.version == "1" and first.promoted
    # The champion's weights live in the registry; drop the workspace copy so that each test can check
    # that the refused run did not train (models/challenger would reappear).
    shutil.rmtree(proj / "models" / "challenger")
    return proj


@pytest.fixture
def project(refusing_project: Path) -> Iterator[Path]:
    """The champion project, with params.yaml restored after each test."""
    params = (refusing_project / "params.yaml").read_bytes()
    yield refusing_project
    (refusing_project / "params.yaml").write_bytes(params)


def use_source(project: Path, name: str, content: bytes | pd.DataFrame, **params) -> Path:
    """Write data/raw/<name> and point data.source at it (text/label columns, no subsample)."""
    path = project / "data" / "raw" / name
    path.write_bytes(content.to_csv(index=False).encode() if isinstance(content, pd.DataFrame) else content)
    set_params(
        project,
        {"data.source": f"data/raw/{name}", "data.text_column": "text", "data.label_column": "label",
         "data.max_rows": None, **{f"data.{k}": v for k, v in params.items()}},
    )  # fmt: skip
    return path


def refused(project: Path, error: type[Exception], match: str) -> Exception:
    """Run the flow; it must raise `error` matching `match` and leave the registry and champion alone."""
    from flows.retrain import retrain

    manifest = (project / "data" / "prepared" / "manifest.json").read_bytes()
    with pytest.raises(error, match=match) as info:
        retrain(project_dir=str(project))
    assert not (project / "models" / "challenger").exists(), "the refused run trained a model"
    reg, name = registry(project), model_name(project)
    assert [v.version for v in reg.list_versions(name)] == ["1"]
    assert reg.get_alias(name, "champion").version == "1"
    if error is DataSourceError:  # refused before writing anything: the champion's snapshot is still there
        assert (project / "data" / "prepared" / "manifest.json").read_bytes() == manifest
    return info.value


def csv_lines(n: int = 240) -> list[bytes]:
    """Lines of a CSV of real reviews, one record per line (reviews with line breaks left out)."""
    df = real_reviews(n)
    return df[~df["text"].str.contains("[\r\n]")].to_csv(index=False).encode().splitlines(keepends=True)


# -- the source cannot be read faithfully: DataSourceError at prepare ------------------------------------


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", r"data/raw/empty\.csv is empty \(0 bytes\)"),
     (b"text,label\n", r"data/raw/empty\.csv has a header \(text, label\) but no data rows")],
    ids=["zero-bytes", "header-only"],
)  # fmt: skip
def test_empty_file(project: Path, content: bytes, match: str):
    use_source(project, "empty.csv", content)
    refused(project, DataSourceError, match)


def test_malformed_csv_unbalanced_quote(project: Path):
    lines = csv_lines()
    number = next(i for i in range(100, len(lines)) if not lines[i].startswith(b'"')) + 1  # 1-based
    lines[number - 1] = b'"' + lines[number - 1]  # opens a quote that is never closed where it should be
    use_source(project, "quotes.csv", b"".join(lines))
    refused(
        project,
        DataSourceError,
        rf"data/raw/quotes\.csv is not a well-formed CSV: the record starting on line {number} has an"
        r" unbalanced quote .* quotes inside a quoted field must be doubled",
    )


def test_non_utf8_bytes(project: Path):
    lines = csv_lines()
    offset = sum(map(len, lines[:50])) + 5
    data = b"".join(lines)
    use_source(project, "latin1.csv", data[:offset] + b"\xe9" + data[offset:])
    refused(
        project,
        DataSourceError,
        rf"data/raw/latin1\.csv is not UTF-8 text: byte 0xe9 at offset {offset} \(line 51, column 6.*"
        r"`iconv -f latin1 -t utf-8 data/raw/latin1\.csv > data/raw/latin1\.utf8\.csv`",
    )


def test_missing_text_column(project: Path):
    use_source(project, "review.csv", real_reviews(240).rename(columns={"text": "review"}))
    refused(
        project,
        DataSourceError,
        r"data/raw/review\.csv has no column 'text' \(data\.text_column\); its columns are: review, label\."
        r" Set data\.text_column in params\.yaml",
    )


def test_missing_label_column(project: Path):
    use_source(project, "category.csv", real_reviews(240).rename(columns={"label": "category"}))
    refused(
        project,
        DataSourceError,
        r"data/raw/category\.csv has no column 'label' \(data\.label_column\); its columns are: text,"
        r" category\. Set data\.label_column in params\.yaml",
    )


def test_source_path_does_not_exist(project: Path):
    set_params(project, {"data.source": "data/raw/missing.csv"})
    refused(project, DataSourceError, r"data source data/raw/missing\.csv does not exist \(check data\.")


def test_dvc_tracked_file_modified_behind_dvcs_back(project: Path):
    from tasks.prepare import check_dvc_tracked, file_md5

    path = use_source(project, "tracked.csv", real_reviews(240))
    added = run([*DVC, "add", "data/raw/tracked.csv"], project)
    assert added.returncode == 0, added.stderr
    dvc_file = project / "data" / "raw" / "tracked.csv.dvc"
    try:
        recorded = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
        check_dvc_tracked(path, "data/raw/tracked.csv")  # DVC's own record matches our md5: accepted
        with path.open("ab") as fh:  # a user "fixes" one row in place
            fh.write(b"An extra review nobody recorded,fresh\n")
        refused(
            project,
            DataSourceError,
            r"^data/raw/tracked\.csv does not match the version recorded in tracked\.csv\.dvc"
            rf" \(md5 {file_md5(path)} != {recorded}\): it was modified behind DVC's back;"
            r" run `dvc add data/raw/tracked\.csv` to record the change, or"
            r" `dvc checkout data/raw/tracked\.csv` to restore the recorded version$",
        )
    finally:
        removed = run([*DVC, "remove", "data/raw/tracked.csv.dvc"], project)
        assert removed.returncode == 0, removed.stderr


# -- the data is wrong: DataValidationError at validate -----------------------------------------------


def test_label_typos_outside_the_declared_set(project: Path):
    df = real_reviews(240)
    typos = {0: "frsh", 1: "Rotten", 2: "rottn"}
    df.loc[df.index % 20 < 3, "label"] = [typos[i % 20] for i in df.index[df.index % 20 < 3]]
    use_source(project, "typos.csv", df)
    err = refused(
        project, DataValidationError, r"expect_column_values_to_be_in_set .*label outside \{rotten, fresh\}"
    )
    failing = {o.expectation: o for o in err.report.failures}
    bad = failing["expect_column_values_to_be_in_set"]
    assert bad.unexpected_count == 36 and set(bad.examples) == {"frsh", "Rotten", "rottn"}


def test_a_single_class(project: Path):
    df = real_reviews(480)
    use_source(project, "fresh-only.csv", df[df["label"] == "fresh"])
    refused(project, DataValidationError, r"1 declared class has fewer than 5 train rows: rotten \(0\)")


def test_texts_shared_across_splits_exactly_and_as_case_or_space_variants(project: Path):
    from tasks.config import load_config
    from tasks.kinds.splitting import _hash_order
    from tasks.kinds.text_sources import dedupe_key, prepare_splits

    # prepare's hash-ordered split keeps equal texts (up to case and space) together within a class, so a
    # leak needs the same text under two labels. Pick 20 fresh texts that land in fresh's train part
    # (middle of the hash order) and rotten texts that all sort after them: labelled rotten, the 20 are
    # then the first rotten rows, i.e. rotten's test part. 10 are exact copies, 10 case/space variants.
    seed = load_config(project / "params.yaml").data.seed
    pool = real_reviews(900).drop_duplicates("text")
    pool = pool.assign(h=_hash_order(dedupe_key(pool["text"]), seed, "split"))
    fresh = pool[pool["label"] == "fresh"].head(120).sort_values("h")
    leaked = fresh.iloc[60:80]
    rotten = pool[(pool["label"] == "rotten") & (pool["h"] > leaked["h"].max())].head(100)
    assert len(rotten) == 100
    exact = leaked.iloc[:10].assign(label="rotten")
    variants = leaked.iloc[10:].assign(text=lambda d: "  " + d["text"].str.upper().str.replace(" ", "   "))
    df = pd.concat([fresh, rotten, exact, variants.assign(label="rotten")])[["text", "label"]]
    df = df.sample(frac=1, random_state=0).reset_index(drop=True)
    use_source(project, "leaky.csv", df, drop_duplicates=False)
    splits, _ = prepare_splits(df, load_config(project / "params.yaml").data)
    key = lambda s: set(s.str.lower().str.split().str.join(" "))  # noqa: E731
    assert len(key(splits["train"]["text"]) & key(splits["test"]["text"])) == 20  # it does leak
    err = refused(
        project,
        DataValidationError,
        r"20 texts of the train split also appear in the test split \(compared case- and"
        r" whitespace-insensitively\)",
    )
    overlap = next(o for o in err.report.failures if o.table == "train_test_overlap")
    assert overlap.unexpected_count == 20


def test_duplicated_rows_over_the_limit(project: Path):
    df = real_reviews(240)
    # a source concatenated with part of itself (an export appended twice): 40% of rows are repeats
    use_source(project, "twice.csv", pd.concat([df, df.head(160)]), drop_duplicates=False)
    refused(project, DataValidationError, r"duplicate rate .* exceeds max_duplicate_rate")


def test_absurdly_long_texts(project: Path):
    df = real_reviews(240)
    # What a lost line break or delimiter does: many reviews run together into one "text".
    together = " ".join(df["text"]) * 10
    for row, begin in ((3, 0), (150, 5_000)):
        df.loc[row, "text"] = together[begin : begin + 99_999].strip() + "."
    assert df["text"].str.len().nlargest(2).tolist() == [100_000, 100_000]
    use_source(project, "long.csv", df)
    err = refused(
        project,
        DataValidationError,
        r"2 texts have a length outside \[1, 5000\] characters: '.*' \(100000 chars\), '.*' \(100000 chars\)",
    )
    failures = {o.expectation: o for o in err.report.failures}
    assert failures["expect_column_value_lengths_to_be_between"].unexpected_count == 2


def test_drift_block_stops_the_run_before_training(project: Path):
    """Only short reviews: validation is told to tolerate the length change, drift.length=block is not."""
    from tasks.drift import DriftBlocked

    df = real_reviews(2000)
    use_source(project, "short.csv", df[df["text"].str.len() < 60].reset_index(drop=True))
    set_params(project, {"validate.reference_length_tolerance": 10.0, "drift.length": "block"})
    err = refused(project, DriftBlocked, r"length")
    assert err.report.blocked and err.report.check("length").drifted
    assert (project / "reports" / "drift" / "drift.png").is_file()
    assert "BLOCKED" in (project / "reports" / "drift" / "summary.md").read_text()
