"""The validate stage against real Great Expectations: each rule on a small frame that breaks only it."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import string
from pathlib import Path

import pandas as pd
import pytest

from tasks.champion import write_manifest
from tasks.config import Config, ValidateConfig, load_config
from tasks.kinds.text_validate import validate_splits
from tasks.paths import SPLITS, ProjectPaths
from tasks.runtime import _ENV_DEFAULTS
from tasks.validate import (
    DataValidationError,
    ExpectationOutcome,
    ValidationReport,
    main,
    run_validate,
)

LABELS = ["rotten", "fresh"]
CFG = ValidateConfig(
    min_text_chars=1,
    max_text_chars=5000,
    max_duplicate_rate=0.0,
    min_rows_per_class=10,
    reference_label_tolerance=0.15,
    reference_length_tolerance=0.5,
    reference_min_vocab_coverage=0.7,
)
PER_CLASS = {"train": 30, "validation": 10, "test": 10}
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"

IN_SET = "expect_column_values_to_be_in_set"
NOT_NULL = "expect_column_values_to_not_be_null"
LENGTHS = "expect_column_value_lengths_to_be_between"
UNIQUE = "expect_column_proportion_of_unique_values_to_be_between"
EXISTS = "expect_column_to_exist"


def make_splits() -> dict[str, pd.DataFrame]:
    """Clean data: distinct texts everywhere, PER_CLASS rows of each label per split."""
    frames = {}
    for split, n in PER_CLASS.items():
        rows = [(f"{split} review {label} {i}", label) for label in LABELS for i in range(n)]
        # The dtype prepare writes: pandas' nullable string, nulls as pd.NA.
        frames[split] = pd.DataFrame(rows, columns=["text", "label"]).astype("string")
    return frames


def failed(report: ValidationReport) -> dict[tuple[str, str], ExpectationOutcome]:
    return {(o.expectation, o.table): o for o in report.failures}


def test_clean_data_passes() -> None:
    report = validate_splits(make_splits(), LABELS, CFG)
    assert report.success
    assert report.failures == ()
    assert all(o.success for o in report.outcomes)
    assert report.rows == {"train": 60, "validation": 20, "test": 20}
    kinds = {(o.expectation, o.table, o.column) for o in report.outcomes}
    assert {
        (EXISTS, "train", "text"),
        (EXISTS, "test", "label"),
        (NOT_NULL, "dataset", "text"),
        (NOT_NULL, "dataset", "label"),
        (LENGTHS, "dataset", "text"),
        (IN_SET, "dataset", "label"),
        (UNIQUE, "dataset", "text"),
        ("expect_column_values_to_be_between", "class_counts", "rows"),
        ("expect_table_row_count_to_equal", "train_test_overlap", None),
    } <= kinds
    json.dumps(report.to_dict())  # must be JSON-serialisable
    assert "PASSED" in report.summary_markdown()


def test_unknown_label_fails_in_set_with_count() -> None:
    splits = make_splits()
    splits["train"].loc[[0, 1, 2], "label"] = "frsh"
    report = validate_splits(splits, LABELS, CFG)
    assert not report.success
    assert set(failed(report)) == {(IN_SET, "dataset")}
    outcome = failed(report)[(IN_SET, "dataset")]
    assert outcome.unexpected_count == 3
    assert outcome.examples == ["frsh"]
    message = report.error_message()
    assert IN_SET in message
    assert "3 rows have a label outside {rotten, fresh}" in message
    assert "data.labels" in message
    assert "reports/validation" in message


def test_empty_text_fails_length_check() -> None:
    splits = make_splits()
    splits["validation"].loc[4, "text"] = ""
    report = validate_splits(splits, LABELS, CFG)
    assert set(failed(report)) == {(LENGTHS, "dataset")}
    outcome = failed(report)[(LENGTHS, "dataset")]
    assert outcome.unexpected_count == 1
    assert outcome.examples == [""]
    assert "1 text has a length outside [1, 5000]" in report.error_message()


def test_null_text_fails_not_null_and_locates_rows() -> None:
    splits = make_splits()
    splits["train"].loc[[3, 7], "text"] = None
    report = validate_splits(splits, LABELS, CFG)
    assert set(failed(report)) == {(NOT_NULL, "dataset")}
    outcome = failed(report)[(NOT_NULL, "dataset")]
    assert outcome.column == "text"
    assert outcome.unexpected_count == 2
    assert outcome.examples == ["train[3]", "train[7]"]


def test_over_long_text_fails_and_example_is_truncated() -> None:
    splits = make_splits()
    splits["test"].loc[0, "text"] = "x" * 5001
    report = validate_splits(splits, LABELS, CFG)
    outcome = failed(report)[(LENGTHS, "dataset")]
    assert outcome.unexpected_count == 1
    assert len(outcome.examples[0]) <= 80
    assert "5001 chars" in outcome.detail


def test_missing_label_column_everywhere_is_reported_not_raised() -> None:
    splits = {name: frame.drop(columns=["label"]) for name, frame in make_splits().items()}
    report = validate_splits(splits, LABELS, CFG)
    assert not report.success
    missing = [o for o in report.failures if o.expectation == EXISTS]
    assert {(o.table, o.column) for o in missing} == {(s, "label") for s in SPLITS}
    # Column expectations GX could not evaluate are failures with a reason, not crashes.
    in_set = failed(report)[(IN_SET, "dataset")]
    assert in_set.unexpected_count is None
    assert "label" in in_set.detail and "not evaluated" in in_set.detail
    assert "the train split has no 'label' column" in report.error_message()


def test_label_column_missing_in_one_split() -> None:
    splits = make_splits()
    splits["test"] = splits["test"].drop(columns=["label"])
    report = validate_splits(splits, LABELS, CFG)
    assert {(o.expectation, o.table) for o in report.failures} == {(EXISTS, "test"), (NOT_NULL, "dataset")}
    assert failed(report)[(NOT_NULL, "dataset")].unexpected_count == 20


def test_too_few_train_rows_and_empty_declared_class_fail_class_counts() -> None:
    splits = make_splits()
    train = splits["train"]
    splits["train"] = pd.concat([train[train.label == "rotten"], train[train.label == "fresh"].head(5)])
    report = validate_splits(splits, [*LABELS, "neutral"], CFG)
    outcome = failed(report)[("expect_column_values_to_be_between", "class_counts")]
    assert outcome.unexpected_count == 2
    assert outcome.examples == ["fresh: 5 rows", "neutral: 0 rows"]
    assert "2 declared classes have fewer than 10 train rows: fresh (5), neutral (0)" in outcome.detail
    assert "min_rows_per_class" in report.error_message()


def test_text_shared_between_train_and_test_fails_overlap() -> None:
    splits = make_splits()
    train, test = splits["train"], splits["test"]
    test.loc[0, "text"] = train.loc[0, "text"]
    test.loc[1, "text"] = train.loc[1, "text"]
    test.loc[2, "text"] = (
        "  " + train.loc[2, "text"].upper()
    )  # same text for prepare's case-insensitive dedup
    report = validate_splits(splits, LABELS, CFG)
    overlap = failed(report)[("expect_table_row_count_to_equal", "train_test_overlap")]
    assert overlap.unexpected_count == 3
    assert train.loc[0, "text"] in overlap.examples
    assert ("expect_table_row_count_to_equal", "validation_test_overlap") not in failed(report)
    # The exact-duplicate rule sees the two verbatim copies only.
    assert failed(report)[(UNIQUE, "dataset")].unexpected_count == 2


def test_duplicate_rate_above_limit_fails_and_at_limit_passes() -> None:
    splits = make_splits()  # 100 rows in all
    train = splits["train"]
    train.loc[1:18, "text"] = train.loc[0, "text"]
    report = validate_splits(splits, LABELS, CFG)
    outcome = failed(report)[(UNIQUE, "dataset")]
    assert outcome.unexpected_count == 18  # rows repeating an earlier text
    assert outcome.examples == [train.loc[0, "text"]]
    # duplicate rate = 18/100 is allowed at exactly that limit, although 1 - 0.18 > 0.82 in floats.
    at_limit = CFG.model_copy(update={"max_duplicate_rate": 0.18})
    assert validate_splits(splits, LABELS, at_limit).success
    below = CFG.model_copy(update={"max_duplicate_rate": 0.17})
    assert not validate_splits(splits, LABELS, below).success


def test_data_docs_built_without_writing_gx_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    validate_splits(make_splits(), LABELS, CFG, docs_dir=Path("docs"))
    assert (tmp_path / "docs" / "index.html").is_file()
    assert "transferline.dataset" in (tmp_path / "docs" / "index.html").read_text()
    assert not (tmp_path / "gx").exists()


# -- stage shell ---------------------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path: Path) -> tuple[ProjectPaths, Config]:
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    paths = ProjectPaths.at(tmp_path)
    cfg = load_config(paths.params, {"data.labels": LABELS, "validate.min_rows_per_class": 10})
    return paths, cfg


def write_splits(paths: ProjectPaths, splits: dict[str, pd.DataFrame]) -> None:
    paths.prepared_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(paths.split_file(name), index=False)


def test_run_validate_writes_reports(project: tuple[ProjectPaths, Config]) -> None:
    paths, cfg = project
    write_splits(paths, make_splits())
    paths.validation_dir.mkdir(parents=True)
    (paths.validation_dir / "stale.txt").write_text("old run")
    report = run_validate(paths, cfg)
    assert report.success
    out = paths.validation_dir
    assert not (out / "stale.txt").exists()
    result = json.loads((out / "result.json").read_text())
    assert result["success"] is True and result["rows"] == {"train": 60, "validation": 20, "test": 20}
    assert set(json.loads((out / "gx_result.json").read_text())) >= {"dataset", "class_counts"}
    assert "PASSED" in (out / "summary.md").read_text()
    assert (out / "data_docs" / "index.html").is_file()


def test_run_validate_raises_after_writing_reports(project: tuple[ProjectPaths, Config]) -> None:
    paths, cfg = project
    splits = make_splits()
    splits["train"].loc[0, "label"] = "frsh"
    write_splits(paths, splits)
    with pytest.raises(DataValidationError) as info:
        run_validate(paths, cfg)
    err = info.value
    assert not err.report.success
    assert IN_SET in str(err) and "reports/validation" in str(err)
    out = paths.validation_dir
    assert json.loads((out / "result.json").read_text())["success"] is False
    assert "FAILED" in (out / "summary.md").read_text()
    assert (out / "data_docs" / "index.html").is_file()
    # Prefect pickles task exceptions; the report must survive the round trip.
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err) and clone.report.failures == err.report.failures


def test_run_validate_missing_split_says_run_prepare(project: tuple[ProjectPaths, Config]) -> None:
    paths, cfg = project
    splits = make_splits()
    del splits["test"]
    write_splits(paths, splits)
    with pytest.raises(FileNotFoundError, match="prepare stage"):
        run_validate(paths, cfg)


def test_main_exit_codes(
    project: tuple[ProjectPaths, Config], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, _ = project
    monkeypatch.chdir(paths.root)
    for key in _ENV_DEFAULTS:  # main() sets these; let monkeypatch restore them afterwards
        monkeypatch.setenv(key, os.environ.get(key, _ENV_DEFAULTS[key]))
    write_splits(paths, make_splits())
    write_manifest(paths, "model", None)  # what the champion stage writes when there is no champion yet
    main()
    assert "validate: OK" in capsys.readouterr().out
    splits = make_splits()
    splits["test"].loc[0, "text"] = None
    write_splits(paths, splits)
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    assert NOT_NULL in capsys.readouterr().err
    assert not (paths.root / "gx").exists()


# -- reference checks: new data vs the champion's training split (real reviews) ------------------------
REF_LABELS = "expect_column_values_to_be_between", "reference_label_shares"
REF_LENGTHS = "expect_column_values_to_be_between", "reference_text_lengths"
REF_VOCAB = "expect_column_mean_to_be_between", "reference_vocabulary"
REFERENCE_TABLES = {"reference_label_shares", "reference_text_lengths", "reference_vocabulary"}


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    """Real fresh/rotten reviews of the sample dataset, distinct up to case and whitespace, as prepared."""
    from tasks.kinds.text_sources import resolve_source
    from tasks.prepare import read_table

    path, _ = resolve_source("sample://rotten-tomatoes", Path("."))
    raw = read_table(path)
    frame = raw[raw["category"].isin(LABELS)].rename(columns={"category": "label"})[["text", "label"]]
    key = frame["text"].str.lower().str.split().str.join(" ")
    return frame[~key.duplicated()].reset_index(drop=True).astype("string")


def halves(reviews: pd.DataFrame, n: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two disjoint halves of the same reviews: (reference, new)."""
    head = reviews.head(2 * n)
    return head.iloc[0::2].reset_index(drop=True), head.iloc[1::2].reset_index(drop=True)


def as_splits(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """70/15/15 by position (the rows are already in arbitrary order)."""
    n = len(frame)
    cuts = [0, int(n * 0.7), int(n * 0.85), n]
    return {name: frame.iloc[cuts[i] : cuts[i + 1]].reset_index(drop=True) for i, name in enumerate(SPLITS)}


def reference_outcomes(report: ValidationReport) -> dict[str, ExpectationOutcome]:
    return {o.table: o for o in report.outcomes if o.table.startswith("reference_")}


def test_reference_checks_pass_for_data_like_the_champions(reviews: pd.DataFrame, tmp_path: Path) -> None:
    reference, new = halves(reviews)
    report = validate_splits(as_splits(new), LABELS, CFG, docs_dir=tmp_path / "docs", reference=reference)
    assert report.success, report.error_message()
    outcomes = reference_outcomes(report)
    assert set(outcomes) == REFERENCE_TABLES
    assert {(o.expectation, o.table) for o in outcomes.values()} == {REF_LABELS, REF_LENGTHS, REF_VOCAB}
    assert "largest shift" in outcomes["reference_label_shares"].detail
    assert "q10" in outcomes["reference_text_lengths"].detail
    assert "tokens occur in the champion's training vocabulary" in outcomes["reference_vocabulary"].detail
    assert report.reference_rows == len(reference) == report.to_dict()["reference_rows"]
    assert "Reference: the champion's training split (1,000 rows)." in report.summary_markdown()
    assert set(report.gx_results) >= REFERENCE_TABLES
    index = (tmp_path / "docs" / "index.html").read_text()
    assert "transferline.reference_vocabulary" in index and "transferline.reference_label_shares" in index


def test_without_reference_the_checks_are_skipped_and_said_so() -> None:
    report = validate_splits(make_splits(), LABELS, CFG)
    assert report.success and report.reference_rows is None
    assert not reference_outcomes(report)
    assert "no champion yet: reference checks skipped" in report.summary_markdown()


def test_label_distribution_shift_fails_label_shares(reviews: pd.DataFrame) -> None:
    reference, new = halves(reviews)
    fresh, rotten = new[new.label == "fresh"], new[new.label == "rotten"]
    train = pd.concat([fresh.head(360), rotten.head(40)]).reset_index(drop=True)  # 90% fresh
    rest = pd.concat([fresh.iloc[360:430], rotten.iloc[40:90]])
    splits = {
        "train": train,
        "validation": rest.iloc[::2].reset_index(drop=True),
        "test": rest.iloc[1::2].reset_index(drop=True),
    }
    report = validate_splits(splits, LABELS, CFG, reference=reference)
    assert set(failed(report)) == {REF_LABELS}
    outcome = failed(report)[REF_LABELS]
    ref_fresh = (reference.label == "fresh").mean()
    assert outcome.unexpected_count == 2  # both labels moved: fresh up, rotten down
    expected = f"fresh: 90.0% (expected {ref_fresh - 0.15:.1%}–{ref_fresh + 0.15:.1%}"
    assert expected in outcome.detail
    assert outcome.examples[0].startswith("rotten: 10.0% (expected")  # in declared-label order
    assert "validate.reference_label_tolerance" in report.error_message()


def test_much_shorter_texts_fail_length_quantiles(reviews: pd.DataFrame) -> None:
    reference, _ = halves(reviews)
    rest = reviews.iloc[2000:]
    short = rest[rest.text.str.len() < 40].reset_index(drop=True)  # real, but short, reviews
    assert len(short) >= 300
    report = validate_splits(as_splits(short), LABELS, CFG, reference=reference)
    assert set(failed(report)) == {REF_LENGTHS}
    outcome = failed(report)[REF_LENGTHS]
    ref_q50 = reference.text.str.len().quantile(0.5, interpolation="nearest")
    new_q50 = short.text.str.len().quantile(0.5, interpolation="nearest")
    assert f"q50 = {new_q50:g} chars (expected {ref_q50 * 0.5:g}–{ref_q50 * 1.5:g}" in outcome.detail
    assert "q90" in outcome.detail
    assert "validate.reference_length_tolerance" in report.error_message()


def test_different_vocabulary_fails_coverage(reviews: pd.DataFrame) -> None:
    reference, new = halves(reviews)
    rng = random.Random(7)

    def gibberish(text: str) -> str:  # random lower-case words, same length as the review
        words, size = [], 0
        while size < len(text):
            words.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))))
            size += len(words[-1]) + 1
        return " ".join(words)[: len(text)]

    scrambled = new.assign(text=[gibberish(t) for t in new.text]).astype("string")
    report = validate_splits(as_splits(scrambled), LABELS, CFG, reference=reference)
    assert set(failed(report)) == {REF_VOCAB}
    outcome = failed(report)[REF_VOCAB]
    assert outcome.detail.startswith("only ")
    assert "expected at least 70.0% (validate.reference_min_vocab_coverage)" in outcome.detail
    assert outcome.unexpected_count > 0.9 * sum(len(t.split()) for t in scrambled.text)
    assert outcome.examples and all(e in scrambled.text.str.cat(sep=" ") for e in outcome.examples)


def test_reference_without_label_column_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="missing label"):
        validate_splits(make_splits(), LABELS, CFG, reference=pd.DataFrame({"text": ["a b"]}))


def test_run_validate_with_reference_records_it(
    project: tuple[ProjectPaths, Config], reviews: pd.DataFrame
) -> None:
    paths, cfg = project
    reference, new = halves(reviews, 500)
    write_splits(paths, as_splits(new))
    report = run_validate(paths, cfg, reference=reference)
    assert report.success and report.reference_rows == 500
    result = json.loads((paths.validation_dir / "result.json").read_text())
    assert result["reference_rows"] == 500
    assert result["thresholds"]["reference_min_vocab_coverage"] == cfg.validate_.reference_min_vocab_coverage
    assert (
        "Reference: the champion's training split (500 rows)."
        in (paths.validation_dir / "summary.md").read_text()
    )


def test_text_advice_stays_with_the_text_task():
    """A failed check every task shares is advised in the task's own terms: a missing column of an image
    or token split never sends the user to data.text_column, and text keeps its own advice."""
    from tasks.kinds.image_validate import image_hint
    from tasks.kinds.text_validate import text_hint
    from tasks.kinds.token_validate import token_hint
    from tasks.validate import ExpectationOutcome

    def missing(column: str) -> ExpectationOutcome:
        return ExpectationOutcome("expect_column_to_exist", "train", column, False, None, (), "missing")

    assert "data.text_column" in text_hint(missing("text"))
    for hint in (image_hint(missing("sha256")), token_hint(missing("tags"))):
        assert "text" not in hint and "re-run the prepare stage" in hint
    assert "(sha256)" in image_hint(missing("sha256"))
    leak = ExpectationOutcome("expect_table_row_count_to_equal", "train_test_overlap", None, False, 3, (), "")
    assert "texts must not cross splits" in text_hint(leak)
