"""The text task's Great Expectations suite: the checks of tasks/validate.py's stage, on texts.

Every check is a real GX expectation; those GX cannot express per value (rows per class, texts shared
between splits) run on small derived frames:

* ``train`` / ``validation`` / ``test``: each split has the ``text`` and ``label`` columns.
* ``dataset`` (all splits concatenated, plus a ``split`` column): text and label non-null, text length in
  ``[validate.min_text_chars, validate.max_text_chars]``, labels within ``data.labels``, duplicate rate.
* ``class_counts`` (one row per *declared* class, with its count of train rows, 0 included): every class
  has at least ``validate.min_rows_per_class`` train rows.
* ``train_test_overlap`` / ``validation_test_overlap`` (one row per shared text): must be empty.

With a *reference* (the training split of the current champion), new data must also look like the data
that trained it (tables ``reference_*``; skipped, and said so in the summary, when there is no champion):

* ``reference_label_shares`` (one row per declared class: its share of the new train split, its share of
  the reference and the absolute ``shift``): every shift at most ``validate.reference_label_tolerance``.
* ``reference_text_lengths`` (one row per quantile q10, q50, q90 of the text length in characters, new
  data (all splits) vs reference, nearest rank): each relative ``change`` within
  ± ``validate.reference_length_tolerance``, i.e. the new quantile within reference × (1 ± tolerance).
* ``reference_vocabulary`` (one row per word token of the new texts, lower-cased ``\\w+``, with ``seen``
  1/0 for whether the reference has it): mean of ``seen`` (the share of tokens the champion has seen) at
  least ``validate.reference_min_vocab_coverage``.

Duplicate rate: the fraction of rows whose text repeats an earlier row's text exactly, i.e.
``(n - n_distinct) / n`` over the non-null texts of all splits. GX's proportion of unique values is
``n_distinct / n`` (distinct values, not values occurring once), so ``rate <= max`` is exactly
``proportion >= 1 - max``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import ValidateConfig
from tasks.paths import SPLITS
from tasks.validate import (
    _RATE_EPSILON,
    LABEL,
    MAX_EXAMPLES,
    NO_REFERENCE,
    REQUIRED_COLUMNS,
    TEXT,
    ExpectationOutcome,
    LengthWords,
    ValidationReport,
    _Check,
    _class_count_check,
    _class_counts,
    _column_exists_check,
    _combine,
    _examples,
    _have,
    _label_share_check,
    _label_shares,
    _length_quantiles,
    _n,
    _quote,
    length_quantile_check,
    logger,
    require_reference,
    run_checks,
    shared_hint,
)

OVERLAP_PAIRS = (("train", "test"), ("validation", "test"))
_TOKEN = re.compile(r"\w+")
LENGTH_WORDS = LengthWords(
    "text-length", "chars", "validate.reference_length_tolerance", "reference_text_lengths"
)

# What to change when a text check fails, by the check's table (the reference checks and the overlaps) or
# its GX expectation; the checks every task shares fall through to validate.shared_hint.
_TABLE_HINTS = {
    "reference_text_lengths": "the texts are much shorter or longer than those the champion was trained on:"
    " check the source for truncation or a changed text column (data.text_column); if genuine, raise"
    " validate.reference_length_tolerance in params.yaml",
    "reference_vocabulary": "the texts use words the champion never saw (another language, domain or a"
    " broken encoding?): check data.source and data.text_column; if genuine, lower"
    " validate.reference_min_vocab_coverage in params.yaml",
}
_EXPECTATION_HINTS = {
    "expect_column_to_exist": "the prepared splits must have 'text' and 'label' columns: check"
    " data.text_column and data.label_column in params.yaml and re-run the prepare stage",
    "expect_column_proportion_of_unique_values_to_be_between": "set data.drop_duplicates: true or raise"
    " validate.max_duplicate_rate in params.yaml",
    "expect_column_value_lengths_to_be_between": "fix or remove those rows in the source data, or adjust"
    " validate.min_text_chars / validate.max_text_chars in params.yaml",
}
_OVERLAP_HINT = "texts must not cross splits: set data.drop_duplicates: true in params.yaml (prepare dedups)"


class TextValidationReport(ValidationReport):
    """The suite's verdict; its advice names the text settings."""

    def hint(self, outcome: ExpectationOutcome) -> str:
        return text_hint(outcome)


def text_hint(outcome: ExpectationOutcome) -> str:
    """What to change so that this expectation passes."""
    if outcome.table == "reference_label_shares":
        return shared_hint(outcome)
    if outcome.table in _TABLE_HINTS:
        return _TABLE_HINTS[outcome.table]
    if outcome.expectation == "expect_column_to_exist" or outcome.detail.startswith("not evaluated"):
        return _EXPECTATION_HINTS["expect_column_to_exist"]
    if outcome.expectation == "expect_column_values_to_be_in_set" or outcome.table == "class_counts":
        return shared_hint(outcome)
    if outcome.table.endswith("_overlap"):
        return _OVERLAP_HINT
    return _EXPECTATION_HINTS.get(outcome.expectation) or shared_hint(outcome)


def validate_splits(
    splits: dict[str, pd.DataFrame],
    labels: Sequence[str],
    cfg: ValidateConfig,
    docs_dir: Path | None = None,
    reference: pd.DataFrame | None = None,
) -> ValidationReport:
    """Build the suite from ``cfg`` and ``labels``, run it on the split frames, optionally build Data Docs.

    ``splits`` maps split name to frame and must contain ``train`` and ``test``. When ``docs_dir`` is
    given, GX Data Docs HTML is written there (``docs_dir / "index.html"``); nothing else touches disk.
    ``reference`` (columns text and label: the champion's training split) adds the reference_* checks.
    """
    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise ValueError(f"validate_splits needs the {' and '.join(missing)} split(s); got {sorted(splits)}")
    names = [s for s in SPLITS if s in splits] + [s for s in splits if s not in SPLITS]
    frames = {s: splits[s] for s in names}
    labels = list(labels)

    tables: dict[str, pd.DataFrame] = dict(frames)
    checks: list[_Check] = []
    for name, frame in frames.items():
        checks += [_column_exists_check(name, frame, col) for col in REQUIRED_COLUMNS]
    tables["dataset"], locate = _combine(frames)
    checks += _dataset_checks(tables["dataset"], labels, cfg, locate)
    tables["class_counts"] = _class_counts(frames["train"], labels)
    has_labels = LABEL in frames["train"].columns
    checks.append(_class_count_check(tables["class_counts"], cfg.min_rows_per_class, has_labels))
    for left, right in OVERLAP_PAIRS:
        if left in frames and right in frames:
            table = f"{left}_{right}_overlap"
            tables[table] = _overlap(frames[left], frames[right])
            checks.append(_overlap_check(table, left, right, tables[table]))
    if reference is not None:
        reference_tables, reference_checks = _reference_checks(frames, reference, labels, cfg)
        tables.update(reference_tables)
        checks += reference_checks

    outcomes, raw = run_checks(tables, checks, docs_dir)
    report = TextValidationReport(
        success=all(o.success for o in outcomes),
        outcomes=outcomes,
        rows={name: len(frame) for name, frame in frames.items()},
        gx_results=raw,
        reference_rows=None if reference is None else len(reference),
    )
    logger.info(
        "validation %s: %d of %d expectations failed",
        "passed" if report.success else "FAILED",
        len(report.failures),
        len(outcomes),
    )
    if reference is None:
        logger.info(NO_REFERENCE)
    return report


def _dataset_checks(
    data: pd.DataFrame, labels: list[str], cfg: ValidateConfig, locate: Callable[[int], str]
) -> list[_Check]:
    import great_expectations.expectations as gxe

    def not_null(column: str) -> _Check:
        def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
            n = int(result.get("unexpected_count") or 0)
            rows = [locate(int(i)) for i in result.get("partial_unexpected_index_list") or []]
            if success:
                return n, [], f"all {len(data):,} rows have a {column}"
            return n, rows[:MAX_EXAMPLES], f"{_n(n, 'row')} {_have(n)} a null {column}: {', '.join(rows[:5])}"

        return _Check("dataset", column, gxe.ExpectColumnValuesToNotBeNull(column=column), explain)

    def lengths(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        n = int(result.get("unexpected_count") or 0)
        bounds = f"[{cfg.min_text_chars}, {cfg.max_text_chars}] characters"
        if success:
            return n, [], f"every text is {bounds} long"
        values = [str(v["value"]) for v in result.get("partial_unexpected_counts") or []]
        shown = ", ".join(f"{_quote(v)} ({len(v)} chars{', empty' if not v else ''})" for v in values[:3])
        return n, _examples(values), f"{_n(n, 'text')} {_have(n)} a length outside {bounds}: {shown}"

    def in_set(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        n = int(result.get("unexpected_count") or 0)
        declared = "{" + ", ".join(labels) + "}"
        if success:
            return n, [], f"every non-null label is one of {declared}"
        counts = result.get("partial_unexpected_counts") or []
        shown = ", ".join(f"{_quote(str(c['value']))} ×{c['count']}" for c in counts[:5])
        examples = _examples([str(c["value"]) for c in counts])
        return n, examples, f"{_n(n, 'row')} {_have(n)} a label outside {declared}: {shown}"

    def duplicates(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        texts = data[TEXT].dropna()
        counts = texts.value_counts()
        repeated = counts[counts > 1]
        n = int(len(texts) - len(counts))
        rate = n / len(texts) if len(texts) else 0.0
        verb = "repeats" if n == 1 else "repeat"
        head = f"duplicate rate {rate:.4%} ({_n(n, 'row')} of {len(texts):,} {verb} an earlier text)"
        if success:
            return n, [], f"{head} is within max_duplicate_rate {cfg.max_duplicate_rate:g}"
        shown = ", ".join(f"{_quote(str(t))} ×{c}" for t, c in repeated.head(3).items())
        examples = _examples([str(t) for t in repeated.index])
        return n, examples, f"{head} exceeds max_duplicate_rate {cfg.max_duplicate_rate:g}: {shown}"

    return [
        not_null(TEXT),
        not_null(LABEL),
        _Check(
            "dataset",
            TEXT,
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=TEXT, min_value=cfg.min_text_chars, max_value=cfg.max_text_chars
            ),
            lengths,
        ),
        _Check("dataset", LABEL, gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=labels), in_set),
        _Check(
            "dataset",
            TEXT,
            gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
                column=TEXT,
                min_value=max(0.0, 1.0 - cfg.max_duplicate_rate - _RATE_EPSILON),
                max_value=None,
                description=(
                    f"Duplicate rate of text over all splits (rows repeating an earlier row's text)"
                    f" is at most {cfg.max_duplicate_rate:g}, i.e. the proportion of distinct texts is"
                    f" at least {1 - cfg.max_duplicate_rate:g}."
                ),
            ),
            duplicates,
        ),
    ]


def _normalise(text: Any) -> str:
    # prepare's dedup key (lower case, whitespace collapsed): what it calls a duplicate counts as shared.
    return " ".join(str(text).lower().split())


def _overlap(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """One row per text (normalised) present in both frames, shown as the left frame's text."""
    if TEXT not in left.columns or TEXT not in right.columns:
        return pd.DataFrame({TEXT: pd.Series([], dtype="object")})
    right_keys = {_normalise(t) for t in right[TEXT].dropna()}
    shared: dict[str, str] = {}
    for text in left[TEXT].dropna():
        key = _normalise(text)
        if key in right_keys:
            shared.setdefault(key, str(text))
    return pd.DataFrame({TEXT: pd.Series(list(shared.values()), dtype="object")})


def _overlap_check(table: str, left: str, right: str, shared: pd.DataFrame) -> _Check:
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        n = int(result.get("observed_value", len(shared)) or 0)
        if success:
            return n, [], f"no text of the {left} split appears in the {right} split"
        texts = [str(t) for t in shared[TEXT]]
        shown = ", ".join(_quote(t) for t in texts[:3])
        return (
            n,
            _examples(texts),
            f"{_n(n, 'text')} of the {left} split also {'appears' if n == 1 else 'appear'} in the {right}"
            f" split (compared case- and whitespace-insensitively): {shown}",
        )

    expectation = gxe.ExpectTableRowCountToEqual(
        value=0,
        description=(
            f"No text of the {left} split appears in the {right} split (this table has a row per shared text)"
        ),
    )
    return _Check(table, None, expectation, explain)


def _reference_checks(
    frames: dict[str, pd.DataFrame], reference: pd.DataFrame, labels: list[str], cfg: ValidateConfig
) -> tuple[dict[str, pd.DataFrame], list[_Check]]:
    """The reference_* tables and their checks (see the module docstring)."""
    require_reference(reference, REQUIRED_COLUMNS, "text classification")
    texts = [f[TEXT].dropna().astype(str) for f in frames.values() if TEXT in f.columns]
    new_texts = pd.concat(texts, ignore_index=True) if texts else pd.Series([], dtype="object")
    ref_texts = reference[TEXT].dropna().astype(str)

    shares = _label_shares(frames["train"], reference, labels, cfg.reference_label_tolerance)
    lengths = _length_quantiles(new_texts.str.len(), ref_texts.str.len(), cfg.reference_length_tolerance)
    vocabulary = {t for text in ref_texts for t in _TOKEN.findall(text.lower())}
    tokens = [t for text in new_texts for t in _TOKEN.findall(text.lower())]
    seen = pd.DataFrame({"token": tokens, "seen": [int(t in vocabulary) for t in tokens]})
    seen = seen.astype({"token": "object", "seen": "int64"})
    tables = {
        "reference_label_shares": shares,
        "reference_text_lengths": lengths,
        "reference_vocabulary": seen,
    }
    checks = [
        _label_share_check(shares, cfg.reference_label_tolerance),
        length_quantile_check(lengths, cfg.reference_length_tolerance, LENGTH_WORDS),
        _vocabulary_check(seen, len(vocabulary), cfg.reference_min_vocab_coverage),
    ]
    return tables, checks


def _vocabulary_check(seen: pd.DataFrame, vocabulary_size: int, minimum: float) -> _Check:
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        coverage = result.get("observed_value")
        coverage = float(coverage) if coverage is not None else 0.0
        unseen = seen.loc[seen["seen"] == 0, "token"].value_counts()
        head = (
            f"{coverage:.1%} of the new data's {len(seen):,} word tokens occur in the champion's training"
            f" vocabulary ({vocabulary_size:,} distinct words)"
        )
        if success:
            return int(unseen.sum()), [], f"{head}; at least {minimum:.1%} required"
        shown = ", ".join(f"{_quote(str(t))} ×{c}" for t, c in unseen.head(5).items())
        detail = (
            f"only {head}; expected at least {minimum:.1%} (validate.reference_min_vocab_coverage);"
            f" most frequent unseen words: {shown}"
        )
        return int(unseen.sum()), _examples([str(t) for t in unseen.index]), detail

    expectation = gxe.ExpectColumnMeanToBeBetween(
        column="seen",
        min_value=max(0.0, minimum - _RATE_EPSILON),
        description=(
            f"At least {minimum:g} of the new data's word tokens (lower-cased \\w+, one row each) occur"
            " in the champion's training split (seen = 1)."
        ),
    )
    return _Check("reference_vocabulary", "seen", expectation, explain)
