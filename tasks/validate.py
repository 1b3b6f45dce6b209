"""validate stage: a Great Expectations suite over the prepared train/validation/test splits.

Every check is a real GX 1.x expectation, so it shows up in the GX result and in Data Docs. The task
builds its suite (text: tasks/kinds/text_validate.py, whose docstring lists the checks; images and
sentences: image_validate.py, token_validate.py) from the pieces here: the checks every task shares
(columns present, labels in the declared set, rows per class, label shares against the champion's data),
the GX runner, the report and its hints, and the stage shell.

great_expectations is imported inside the functions: it costs seconds and most callers of this module (flow
definitions, the CLI) never run a validation.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from tasks import caching
from tasks.champion import load_champion
from tasks.config import Config, ConfigError, load_config
from tasks.kinds import task_of
from tasks.paths import SPLITS, ProjectPaths
from tasks.reports import ReportedStop
from tasks.runtime import configure_environment

logger = logging.getLogger("transferline.validate")

TEXT = "text"
LABEL = "label"
REQUIRED_COLUMNS = (TEXT, LABEL)
MAX_EXAMPLES = 3
LISTED = 10  # offending examples named in a detail sentence (the examples keep MAX_EXAMPLES)
_EXAMPLE_CHARS = 80
# Pairs checked for leakage: test is what the gate scores, so nothing seen in training or model selection
# may reappear there.
# Lets a duplicate rate exactly at the limit pass despite float rounding of 1 - max_duplicate_rate.
_RATE_EPSILON = 1e-12
REFERENCE_QUANTILES = (0.1, 0.5, 0.9)
NO_REFERENCE = "no champion yet: reference checks skipped"


# -- report ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpectationOutcome:
    """One GX expectation's verdict, reduced to what a person needs to act on it."""

    expectation: str  # GX expectation type, e.g. "expect_column_values_to_be_in_set"
    table: str  # "train"/"validation"/"test", "dataset", "class_counts", "<a>_<b>_overlap"
    column: str | None
    success: bool
    unexpected_count: int | None  # offending rows / classes / shared texts; None when not applicable
    examples: list[str]  # up to MAX_EXAMPLES offending values, truncated
    detail: str  # one human sentence


@dataclass(frozen=True)
class ValidationReport:
    """The verdict of the whole suite; ``gx_results`` keeps GX's raw result JSON per table."""

    success: bool
    outcomes: tuple[ExpectationOutcome, ...]
    rows: dict[str, int]
    gx_results: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Rows of the reference (the champion's training split) the data was compared with; None = no
    # reference, the reference_* checks were skipped.
    reference_rows: int | None = None

    @property
    def failures(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.success)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the raw GX results)."""
        return {
            "success": self.success,
            "rows": dict(self.rows),
            "expectations": len(self.outcomes),
            "failed": len(self.failures),
            "reference_rows": self.reference_rows,
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    def summary_markdown(self) -> str:
        """Short markdown report: verdict, rows per split and one table row per expectation."""
        verdict = "PASSED" if self.success else "FAILED"
        total = sum(self.rows.values())
        lines = [
            f"# Data validation: {verdict}",
            "",
            f"Rows: {_rows_text(self.rows)} ({total:,} in all).  ",
            f"{len(self.outcomes) - len(self.failures)} of {len(self.outcomes)} expectations passed.  ",
            (
                f"Reference: the champion's training split ({self.reference_rows:,} rows)."
                if self.reference_rows is not None
                else f"Reference: {NO_REFERENCE}."
            ),
            "",
            "| Expectation | Table | Column | Verdict | Offending | Examples |",
            "|---|---|---|---|---|---|",
        ]
        for o in self.outcomes:
            count = "" if o.unexpected_count is None else f"{o.unexpected_count:,}"
            examples = ", ".join(_md_cell(repr(e)) for e in o.examples)
            lines.append(
                f"| `{o.expectation}` | {o.table} | {o.column or ''} | {'pass' if o.success else '**FAIL**'}"
                f" | {count} | {examples} |"
            )
        if self.failures:
            lines += ["", "## Failures", ""]
            lines += [f"- **{o.expectation}** ({_where(o)}): {_md_cell(o.detail)}" for o in self.failures]
        return "\n".join(lines) + "\n"

    # What the error message calls the data and how it advises; a task's report overrides these.
    subject = "data"
    prepared = "the prepared data"

    def hint(self, outcome: ExpectationOutcome) -> str:
        """What to change so that this expectation passes."""
        return shared_hint(outcome)

    def write_files(self, out: Path) -> None:
        """Write what a task's report adds beside summary.md (text: nothing; images: bad_images.csv)."""

    def error_message(self, report_dir: Path | None = None) -> str:
        """What failed (each expectation with its count and examples), what to do, where the report is."""
        if self.success:
            return (
                f"data validation passed: {len(self.outcomes)} expectations on {_rows_text(self.rows)} rows"
            )
        lines = [
            f"{self.subject} validation failed: {len(self.failures)} of {len(self.outcomes)} expectations"
            f" failed on {self.prepared} ({_rows_text(self.rows)} rows):"
        ]
        hints: list[str] = []
        for o in self.failures:
            count = "" if o.unexpected_count is None else f" [{o.unexpected_count:,} offending]"
            lines.append(f"  - {o.expectation} on {_where(o)}{count}: {o.detail}")
            hint = self.hint(o)
            if hint not in hints:
                hints.append(hint)
        lines.append("What to do:")
        lines += [f"  - {h}" for h in hints]
        lines.append("  - then re-run prepare and validate (`dvc repro validate` or `transferline run`).")
        where = f"{Path(report_dir).as_posix()}/" if report_dir is not None else "reports/validation/"
        lines.append(f"Full report: {where} (summary.md, result.json, data_docs/ with validate.data_docs).")
        return "\n".join(lines)


class DataValidationError(ReportedStop):
    """The prepared data failed the validation suite; ``str(err)`` says what failed and what to do."""

    report: ValidationReport


# -- core -----------------------------------------------------------------------------------------------
@dataclass
class _Check:
    table: str
    column: str | None
    expectation: Any  # a great_expectations.expectations.Expectation
    # GX result dict -> (offending count, examples, sentence); only called when GX evaluated it.
    explain: Callable[[dict[str, Any], bool], tuple[int | None, list[str], str]]


@dataclass(frozen=True)
class _GxVerdict:
    type: str  # expectation type as GX reports it
    success: bool
    result: dict[str, Any]
    error: str | None  # set when GX could not evaluate the expectation


def run_checks(
    tables: dict[str, pd.DataFrame], checks: list[_Check], docs_dir: Path | None
) -> tuple[tuple[ExpectationOutcome, ...], dict[str, Any]]:
    """Run `checks` on `tables` in GX: their outcomes in the order the checks were given, and GX's raw
    results (every task's suite reports in the order it declares its checks)."""
    verdicts, raw = _run_gx(tables, checks, docs_dir)
    order = {id(check): i for i, check in enumerate(checks)}
    return tuple(_outcome(c, v) for c, v in sorted(verdicts, key=lambda cv: order[id(cv[0])])), raw


def row_check(
    table_name: str,
    table: pd.DataFrame,
    column: str | None,
    expectation: Any,
    bad: pd.Series,
    ok: str,
    what: str,
    show: Callable[[Any], str],
    noun: str,
) -> _Check:
    """A check whose offending rows of `table` are `bad`: the detail counts them as `noun`s ("image",
    "sentence") and names the first LISTED with `show`."""

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        rows = table[bad.fillna(False).astype(bool)]
        if success:
            return 0, [], ok
        listed = [show(r) for r in rows.itertuples(index=False)]
        more = f" … and {len(listed) - LISTED:,} more" if len(listed) > LISTED else ""
        detail = f"{_n(len(rows), noun)} {what}: {'; '.join(listed[:LISTED])}{more}"
        return len(rows), listed[:MAX_EXAMPLES], detail

    return _Check(table_name, column, expectation, explain)


def _run_gx(
    tables: dict[str, pd.DataFrame], checks: list[_Check], docs_dir: Path | None
) -> tuple[list[tuple[_Check, _GxVerdict]], dict[str, Any]]:
    """One ephemeral GX context; one asset, suite and validation definition per table."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    docs_sites: dict[str, Any] = {}
    if docs_dir is not None:
        docs_sites["local_site"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            # Absolute: a relative base_directory would resolve against GX's (absent) project root.
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(Path(docs_dir).resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    # In-memory stores and an explicit docs site: nothing is written to a gx/ folder or a temp dir, and
    # without progress_bars GX prints a tqdm "Calculating Metrics" bar per validation.
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites=docs_sites,
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        ),
    )
    source = context.data_sources.add_pandas(name="transferline")
    verdicts: list[tuple[_Check, _GxVerdict]] = []
    raw: dict[str, Any] = {}
    for table, frame in tables.items():
        table_checks = [c for c in checks if c.table == table]
        if not table_checks:
            continue
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"transferline.{table}"))
        ids = [suite.add_expectation(c.expectation).id for c in table_checks]
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate.{table}", data=batch, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            # SUMMARY keeps the stored JSON small (no full unexpected lists) but gives examples and indices.
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        )
        # GX returns the results in its own order, not the suite's: pair them by expectation id.
        by_id = {r.expectation_config.id: r for r in result.results}
        raw[table] = _json_safe(result.to_json_dict())
        for check, expectation_id in zip(table_checks, ids, strict=True):
            r = by_id[expectation_id]
            verdicts.append(
                (
                    check,
                    _GxVerdict(
                        r.expectation_config.type,
                        bool(r.success),
                        dict(r.result or {}),
                        _exception_message(r.exception_info),
                    ),
                )
            )
    if docs_dir is not None:
        context.build_data_docs()
    return verdicts, raw


def _outcome(check: _Check, verdict: _GxVerdict) -> ExpectationOutcome:
    if verdict.error is not None:
        # GX records an expectation it could not compute (e.g. on a missing column) as failed with an
        # exception; report that instead of crashing.
        return ExpectationOutcome(verdict.type, check.table, check.column, False, None, [], verdict.error)
    count, examples, detail = check.explain(verdict.result, verdict.success)
    return ExpectationOutcome(
        verdict.type, check.table, check.column, verdict.success, count, examples, detail
    )


# -- checks ---------------------------------------------------------------------------------------------
def _column_exists_check(split: str, frame: pd.DataFrame, column: str) -> _Check:
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        if success:
            return None, [], f"the {split} split has a '{column}' column"
        have = ", ".join(map(str, frame.columns)) or "none"
        return None, [], f"the {split} split has no '{column}' column (its columns: {have})"

    return _Check(split, column, gxe.ExpectColumnToExist(column=column), explain)


def _combine(frames: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, Callable[[int], str]]:
    """All splits stacked with a ``split`` column, and a map from its row index to ``split[row]``."""
    parts = [frame.assign(split=name) for name, frame in frames.items()]
    combined = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    names = list(frames)
    starts = [0]
    for frame in frames.values():
        starts.append(starts[-1] + len(frame))

    def locate(index: int) -> str:
        k = bisect.bisect_right(starts, index) - 1
        return f"{names[k]}[{index - starts[k]}]" if 0 <= k < len(names) else f"row {index}"

    return combined, locate


def _class_counts(train: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Train rows per declared class, 0 for a class with no rows (value_counts alone would omit it)."""
    counts = train[LABEL].value_counts() if LABEL in train.columns else pd.Series(dtype="int64")
    return pd.DataFrame({LABEL: labels, "rows": [int(counts.get(label, 0)) for label in labels]})


def _class_count_check(counts: pd.DataFrame, minimum: int, has_labels: bool) -> _Check:
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        if success:
            fewest = int(counts["rows"].min()) if len(counts) else 0
            return 0, [], f"every declared class has at least {minimum} train rows (fewest: {fewest})"
        low = list(counts.loc[counts["rows"] < minimum, [LABEL, "rows"]].itertuples(index=False, name=None))
        note = "" if has_labels else " (the train split has no 'label' column)"
        shown = ", ".join(f"{label} ({rows})" for label, rows in low)
        detail = f"{_n(len(low), 'declared class', 'declared classes')} {_have(len(low))} fewer than"
        detail += f" {minimum} train rows: {shown}{note}"
        return len(low), [f"{label}: {rows} rows" for label, rows in low[:MAX_EXAMPLES]], detail

    expectation = gxe.ExpectColumnValuesToBeBetween(
        column="rows",
        min_value=minimum,
        description=f"Every declared class has at least {minimum} rows in the train split.",
    )
    return _Check("class_counts", "rows", expectation, explain)


def content_overlap_check(
    shared: pd.DataFrame, where: str, noun: str, clean: str, description: str
) -> _Check:
    """The split-overlap check of a task that finds repeated examples itself (images by their bytes,
    sentences by their words): `shared` has a row per example found in more than one split, its column
    `where` says where; `noun` counts them ("image"), `clean` is the sentence when there are none."""
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        if success:
            return 0, [], clean
        listed = list(shared[where])
        detail = f"{_n(len(shared), noun)} appear in more than one split: {'; '.join(listed[:LISTED])}"
        return len(shared), listed[:MAX_EXAMPLES], detail

    expectation = gxe.ExpectTableRowCountToEqual(value=0, description=description)
    return _Check("split_overlap", None, expectation, explain)


def _label_shares(
    train: pd.DataFrame, reference: pd.DataFrame, labels: list[str], tol: float
) -> pd.DataFrame:
    """Per declared class: share of the new train split, share of the reference, |difference| and bounds."""
    new = train[LABEL].value_counts() if LABEL in train.columns else pd.Series(dtype="int64")
    ref = reference[LABEL].astype("string").value_counts()
    n_new, n_ref = len(train), len(reference)
    rows = []
    for label in labels:
        share = int(new.get(label, 0)) / n_new if n_new else 0.0
        ref_share = int(ref.get(label, 0)) / n_ref
        low, high = max(0.0, ref_share - tol), min(1.0, ref_share + tol)
        rows.append((label, share, ref_share, abs(share - ref_share), low, high))
    return pd.DataFrame(rows, columns=[LABEL, "share", "reference_share", "shift", "low", "high"])


def _label_share_check(shares: pd.DataFrame, tol: float) -> _Check:
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        bad = shares[shares["shift"] > tol + _RATE_EPSILON]
        if success:
            worst = float(shares["shift"].max()) if len(shares) else 0.0
            detail = (
                f"every declared label's share of the train split is within ±{tol:.1%} of its share in"
                f" the champion's training data (largest shift {worst:.1%})"
            )
            return 0, [], detail
        items = [
            f"{r.label}: {r.share:.1%} (expected {r.low:.1%}–{r.high:.1%},"
            f" champion's data {r.reference_share:.1%})"
            for r in bad.itertuples(index=False)
        ]
        detail = (
            f"{_n(len(bad), 'label')} moved more than ±{tol:.1%} from {'its' if len(bad) == 1 else 'their'}"
            f" share in the champion's training data (validate.reference_label_tolerance): {'; '.join(items)}"
        )
        return len(bad), items[:MAX_EXAMPLES], detail

    expectation = gxe.ExpectColumnValuesToBeBetween(
        column="shift",
        max_value=tol + _RATE_EPSILON,
        description=(
            f"Each declared label's share of the train split differs by at most {tol:g} from its share in the"
            " champion's training split (shift = |share - reference_share|)."
        ),
    )
    return _Check("reference_label_shares", "shift", expectation, explain)


def _length_quantiles(new_lengths: pd.Series, ref_lengths: pd.Series, tol: float) -> pd.DataFrame:
    """One row per quantile: new and reference text length, allowed range and relative change."""
    quantiles = list(REFERENCE_QUANTILES)
    new_q = new_lengths.quantile(quantiles, interpolation="nearest") if len(new_lengths) else None
    ref_q = ref_lengths.quantile(quantiles, interpolation="nearest")
    rows = []
    for i, q in enumerate(quantiles):
        value = float(new_q.iloc[i]) if new_q is not None else math.nan
        ref = float(ref_q.iloc[i])
        change = value / ref - 1 if ref else (0.0 if value == 0 else math.inf)
        rows.append((f"q{round(q * 100)}", value, ref, max(0.0, ref * (1 - tol)), ref * (1 + tol), change))
    return pd.DataFrame(rows, columns=["quantile", "length", "reference_length", "low", "high", "change"])


def require_reference(reference: pd.DataFrame, columns: tuple[str, ...], trained_for: str) -> None:
    """Refuse a reference (the champion's training split) without rows or without the task's columns;
    `trained_for` completes "was the champion trained for ...?" in the message."""
    missing = [c for c in columns if c not in reference.columns]
    if missing:
        raise ValueError(
            f"the reference (the champion's training split) needs the columns {', '.join(columns)}; missing"
            f" {', '.join(missing)} (its columns: {', '.join(map(str, reference.columns)) or 'none'}): was"
            f" the champion trained for {trained_for}?"
        )
    if reference.empty:
        raise ValueError("the reference (the champion's training split) has no rows")


@dataclass(frozen=True)
class LengthWords:
    """How a task's length-quantile check against the champion's data speaks."""

    what: str  # "text-length", "sentence-length"
    unit: str  # "chars", "tokens"
    key: str  # the params.yaml key of its tolerance
    table: str  # the name of its reference table


def length_quantile_check(table: pd.DataFrame, tol: float, words: LengthWords) -> _Check:
    """Each length quantile of the new data (a _length_quantiles table) within ±tol of the champion's."""
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        if success:
            shown = ", ".join(f"{r.quantile} {r.length:g}" for r in table.itertuples(index=False))
            detail = (
                f"{words.what} quantiles ({shown} {words.unit}) are within ±{tol:.0%} of the champion's data"
            )
            return 0, [], detail
        bad = [
            f"{r.quantile} = {r.length:g} {words.unit} (expected {r.low:g}–{r.high:g}, champion's data"
            f" {r.reference_length:g})"
            for r in table.itertuples(index=False)
            if not abs(r.change) <= tol + _RATE_EPSILON
        ]
        detail = (
            f"{_n(len(bad), f'{words.what} quantile')} of the new data {'is' if len(bad) == 1 else 'are'}"
            f" outside ±{tol:.0%} of the champion's training data ({words.key}): {'; '.join(bad)}"
        )
        return len(bad), bad[:MAX_EXAMPLES], detail

    # A derived frame rather than ExpectColumnQuantileValuesToBeBetween: GX 1.24 crashes serialising that
    # expectation's result (a numpy bool in success_details) when a quantile lands exactly on a bound.
    expectation = gxe.ExpectColumnValuesToBeBetween(
        column="change",
        min_value=-tol - _RATE_EPSILON,
        max_value=tol + _RATE_EPSILON,
        description=(
            f"{words.what.capitalize()} quantiles {', '.join(table['quantile'])} of the new data (all splits,"
            f" nearest rank) are each within ±{tol:g} (relative change) of the champion's training split's"
            f" ({', '.join(f'{v:g}' for v in table['reference_length'])} {words.unit})."
        ),
    )
    return _Check(words.table, "change", expectation, explain)


# -- formatting helpers ---------------------------------------------------------------------------------
def _short(value: str) -> str:
    value = " ".join(value.split()) if value.strip() else value
    return value if len(value) <= _EXAMPLE_CHARS else value[: _EXAMPLE_CHARS - 1] + "…"


def _quote(value: str) -> str:
    return repr(_short(value))


def _examples(values: list[str]) -> list[str]:
    return [_short(v) for v in values[:MAX_EXAMPLES]]


def _n(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count:,} {singular if count == 1 else (plural or singular + 's')}"


def _have(count: int) -> str:
    return "has" if count == 1 else "have"


def _rows_text(rows: dict[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in rows.items())


def _where(outcome: ExpectationOutcome) -> str:
    return f"{outcome.table}.{outcome.column}" if outcome.column else outcome.table


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def shared_hint(outcome: ExpectationOutcome) -> str:
    """What the user can change to make one of the checks every task shares pass (labels, class counts,
    label shares, columns); a task's report handles its own checks first (text_validate.text_hint)."""
    if outcome.table == "reference_label_shares":
        return (
            "the label mix moved away from the data that trained the champion: check the source for a"
            " labelling or sampling change (data.source, data.label_map, data.max_rows); if the shift is"
            " genuine, raise validate.reference_label_tolerance in params.yaml"
        )
    if outcome.expectation == "expect_column_to_exist" or outcome.detail.startswith("not evaluated"):
        return (
            f"the prepared splits lack a column the task reads ({outcome.column or outcome.table}): check"
            " the source's column settings in params.yaml and re-run the prepare stage"
        )
    if outcome.expectation == "expect_column_values_to_be_in_set":
        return "fix the labels in the source data or the declared labels in params.yaml (data.labels)"
    if outcome.table == "class_counts":
        return (
            "add training data for the listed classes, remove them from data.labels, or lower"
            " validate.min_rows_per_class in params.yaml"
        )
    return "fix or remove the offending rows in the source data (data.source)"


def _exception_message(info: Any) -> str | None:
    """GX's exception_info is flat for expectation errors but keyed by metric id for metric errors."""
    if not isinstance(info, dict):
        return None
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for item in candidates:
        if item.get("raised_exception"):
            message = str(item.get("exception_message") or "unknown error").removeprefix("Error: ")
            return f"not evaluated: {message}"
    return None


def _json_safe(value: Any) -> Any:
    # GX's JSON dicts can carry NaN (null cells in partial_unexpected_list), which strict JSON forbids.
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# -- stage shell ----------------------------------------------------------------------------------------
def read_splits(paths: ProjectPaths) -> dict[str, pd.DataFrame]:
    """The prepared split files, or FileNotFoundError naming every missing one."""
    missing = [paths.split_file(s) for s in SPLITS if not paths.split_file(s).is_file()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise FileNotFoundError(
            f"prepared split file(s) missing: {names}; run the prepare stage first"
            " (`dvc repro prepare` or `transferline run`)"
        )
    return {s: pd.read_parquet(paths.split_file(s)) for s in SPLITS}


def run_validate(paths: ProjectPaths, cfg: Config, reference: pd.DataFrame | None = None) -> ValidationReport:
    """Validate the prepared splits and write reports/validation/; raise DataValidationError if they fail.

    ``reference`` (the champion's training split, columns text and label) adds the reference_* checks;
    without it they are skipped and the summary says so.

    Writes result.json (the report), gx_result.json (GX's raw results per table), summary.md and, with
    validate.data_docs, data_docs/index.html, replacing the folder's previous contents, before raising.
    """
    splits = read_splits(paths)
    out = paths.validation_dir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    docs_dir = out / "data_docs" if cfg.validate_.data_docs else None
    report = task_of(cfg).validate(
        splits, paths.prepared_dir, list(cfg.data.labels), cfg.validate_, docs_dir, reference
    )
    result = {
        **report.to_dict(),
        "labels": list(cfg.data.labels),
        "thresholds": cfg.validate_.model_dump(mode="json", exclude={"data_docs"}),
    }
    (out / "result.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "gx_result.json").write_text(
        json.dumps(report.gx_results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    report.write_files(out)
    (out / "summary.md").write_text(report.summary_markdown(), encoding="utf-8")
    if not report.success:
        raise DataValidationError(report, paths.display(out))
    return report


@task(name="validate", cache_policy=caching.VALIDATE)
def validate_task(
    paths: ProjectPaths, cfg: Config, reference: pd.DataFrame | None = None
) -> ValidationReport:
    """Prefect task: run_validate, publishing the summary as the "validation-summary" markdown artifact.

    ``reference``: the champion's training split (columns text, label), or None when there is no champion.
    """
    from prefect.artifacts import create_markdown_artifact

    try:
        report = run_validate(paths, cfg, reference)
    except DataValidationError as err:
        create_markdown_artifact(
            markdown=err.report.summary_markdown(), key="validation-summary", description="data validation"
        )
        raise
    create_markdown_artifact(
        markdown=report.summary_markdown(), key="validation-summary", description="data validation"
    )
    return report


def main() -> None:
    """DVC stage entry point: ``python -m tasks.validate`` from the project root."""
    configure_environment()
    paths = ProjectPaths.at(".")
    try:
        cfg = load_config(paths.params)
        champion = load_champion(paths)  # new data must resemble the champion's training data
        report = run_validate(paths, cfg, champion.reference() if champion else None)
    except (DataValidationError, ConfigError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        raise SystemExit(1) from None
    print(
        f"validate: OK, {len(report.outcomes)} expectations passed on {_rows_text(report.rows)} rows;"
        f" report in {paths.rel(paths.validation_dir)}/"
    )


if __name__ == "__main__":
    main()
