"""Image validation: the Great Expectations suite over a prepared image snapshot.

Every file of the snapshot is opened again here (tasks/kinds/image_files.py): validation, not prepare, is
what judges the data. Tables and their expectations (each a real GX expectation, as for text):

* ``train`` / ``validation`` / ``test``: each split has the ``image``, ``label`` and ``sha256`` columns.
* ``images`` (all splits, one row per image, with ``split``, ``origin`` and the facts read from the file):
  no ``error`` (the file is there, unchanged since prepare, non-empty, identified, passes Pillow's integrity
  check, not truncated, at most ``image.max_pixels``), at least one byte, ``format`` in ``image.formats``,
  ``mode`` in ``image.modes``, width and height in [``image.min_side``, ``image.max_side``], label present
  and in ``data.labels``, the duplicate rate of ``sha256`` at most ``validate.max_duplicate_rate``.
* ``class_counts``: every declared class has at least ``validate.min_rows_per_class`` train images.
* ``split_overlap`` (one row per file content found in more than one split): must be empty.

Against a reference (the champion's training split, whose parquet carries the same facts):

* ``reference_label_shares``: as for text, each class's share within ``validate.reference_label_tolerance``.
* ``reference_image_sizes``: width and height quantiles (q10, q50, q90; nearest rank) each within
  ± ``image.reference_size_tolerance`` (relative) of the reference's.
* ``reference_brightness``: mean grey-level quantiles each within ± ``image.reference_brightness_tolerance``
  (absolute, brightness in [0, 1]) of the reference's.

The report is the text suite's ValidationReport; its "what to do" lines name the bad files and the image
keys to change, and every refused file (``bad_files``: path, split, what is wrong, what to do) is written
beside the report as bad_images.csv, which the summary and the error message link. The GX runner and the
generic checks are tasks/validate.py's.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks import validate as suite
from tasks.config import ValidateConfig
from tasks.kinds.image_config import ImageConfig
from tasks.kinds.image_files import ImageFacts, inspect_image
from tasks.kinds.image_sources import IMAGE, LABEL, ORIGIN, SHA256
from tasks.paths import SPLITS

log = logging.getLogger("transferline.image_validate")

REQUIRED_COLUMNS = (IMAGE, LABEL, SHA256)
_EPS = suite._RATE_EPSILON
_Check = suite._Check


BAD_FILES = "bad_images.csv"  # beside the validation report: every refused file, what is wrong, what to do


@dataclass(frozen=True)
class ImageValidationReport(suite.ValidationReport):
    """The suite's verdict; the error message's advice is about image files and the ``image`` keys.
    ``bad_files`` (bad_files()) lists every file the suite refuses; the stage writes it as BAD_FILES."""

    bad_files: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    subject = "image"
    prepared = "the prepared images"

    def hint(self, outcome: suite.ExpectationOutcome) -> str:
        return image_hint(outcome)

    @property
    def refused_files(self) -> int:
        return 0 if self.bad_files is None else len(self.bad_files)

    def write_files(self, out: Path) -> None:
        if self.refused_files:
            self.bad_files.to_csv(out / BAD_FILES, index=False)

    def summary_markdown(self) -> str:
        summary = super().summary_markdown()
        if not self.refused_files:
            return summary
        listed = f"{suite._n(self.refused_files, 'file')} refused, each with what is wrong and what to do"
        return f"{summary}\n{listed}: [{BAD_FILES}]({BAD_FILES})\n"

    def error_message(self, report_dir: Path | None = None) -> str:
        message = super().error_message(report_dir)
        if not self.refused_files:
            return message
        where = f"{Path(report_dir).as_posix()}/" if report_dir is not None else "reports/validation/"
        return f"{message}\nEvery refused file, with what is wrong and what to do: {where}{BAD_FILES}"


def image_hint(outcome: suite.ExpectationOutcome) -> str:
    """What to change so that this expectation passes."""
    column = outcome.column or ""
    if outcome.table == "images" and column in ("error", "bytes"):
        return (
            "the files listed cannot be used (nothing trains on them): re-export or replace each one, or"
            " remove it from the source (data.source); a file over image.max_pixels can be downscaled first"
        )
    if outcome.table == "images" and column in ("format", "mode", "width", "height"):
        return (
            f"convert or remove the images whose {column} is out of bounds, or widen"
            f" image.{_IMAGE_KEYS[column]} in params.yaml if they are genuine"
        )
    if outcome.table == "split_overlap" or (outcome.table == "images" and column == SHA256):
        return "the same image must not repeat: set data.drop_duplicates: true (prepare keeps one copy)"
    if outcome.table == "reference_image_sizes":
        return (
            "the images are much smaller or larger than those the champion was trained on: check the source"
            " (a resized export, another camera); if genuine, raise image.reference_size_tolerance"
        )
    if outcome.table == "reference_brightness":
        return (
            "the images are much darker or brighter than the champion's: check the source (exposure, an"
            " inverted export); if genuine, raise image.reference_brightness_tolerance"
        )
    return suite.shared_hint(outcome)  # labels, class counts, label shares: as for every task


_IMAGE_KEYS = {
    "format": "formats",
    "mode": "modes",
    "width": "min_side / max_side",
    "height": "min_side / max_side",
}


# -- reading the snapshot ---------------------------------------------------------------------------------


def inspect_snapshot(frames: dict[str, pd.DataFrame], snapshot: Path, max_pixels: int) -> pd.DataFrame:
    """All splits stacked, one row per image: split, origin, label, sha256 and the facts read from its file
    now (a file missing, or changed since prepare recorded its sha256, is an error)."""
    rows = []
    for split_name, frame in frames.items():
        for row in frame.itertuples(index=False):
            facts = _facts(snapshot, getattr(row, IMAGE, None), getattr(row, SHA256, None), max_pixels)
            rows.append(
                {
                    "split": split_name,
                    ORIGIN: getattr(row, ORIGIN, None) or getattr(row, IMAGE, None),
                    LABEL: getattr(row, LABEL, None),
                    SHA256: getattr(row, SHA256, None),
                    **facts.to_dict(),
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=["split", ORIGIN, LABEL, SHA256, *ImageFacts.__dataclass_fields__])
    table["pixels"] = table["width"].astype("Int64") * table["height"].astype("Int64")
    return table


def _facts(snapshot: Path, relative: Any, sha256: Any, max_pixels: int) -> ImageFacts:
    path = snapshot / str(relative) if isinstance(relative, str) and relative else None
    if path is None or not path.is_file():
        return ImageFacts(0, None, None, None, None, None, "missing", f"{relative} is not in the snapshot")
    data = path.read_bytes()
    if isinstance(sha256, str) and hashlib.sha256(data).hexdigest() != sha256:
        detail = f"{relative} changed since prepare recorded it (sha256 differs): re-run prepare"
        return ImageFacts(len(data), None, None, None, None, None, "changed", detail)
    return inspect_image(data, max_pixels)


# -- the suite --------------------------------------------------------------------------------------------


def validate_images(
    frames: dict[str, pd.DataFrame],
    snapshot: Path,
    labels: Sequence[str],
    cfg: ValidateConfig,
    image_cfg: ImageConfig,
    docs_dir: Path | None = None,
    reference: pd.DataFrame | None = None,
) -> ImageValidationReport:
    """Run the image suite on the split frames of the snapshot folder `snapshot`; see the module doc.

    ``reference`` (the champion's training split as prepared, with its facts columns) adds the reference_*
    checks. When ``docs_dir`` is given, GX Data Docs are written there; nothing else touches disk.
    """
    missing = [s for s in ("train", "test") if s not in frames]
    if missing:
        raise ValueError(f"validate_images needs the {' and '.join(missing)} split(s); got {sorted(frames)}")
    frames = {s: frames[s] for s in SPLITS if s in frames}
    labels = list(labels)
    images = inspect_snapshot(frames, snapshot, image_cfg.max_pixels)
    tables: dict[str, pd.DataFrame] = {**frames, "images": images}
    checks = [
        suite._column_exists_check(name, frame, c) for name, frame in frames.items() for c in REQUIRED_COLUMNS
    ]
    checks += _file_checks(images, image_cfg)
    checks += _label_checks(images, labels, cfg)
    tables["class_counts"] = suite._class_counts(frames["train"], labels)
    checks.append(
        suite._class_count_check(tables["class_counts"], cfg.min_rows_per_class, LABEL in frames["train"])
    )
    tables["split_overlap"] = _overlap(images)
    checks.append(_overlap_check(tables["split_overlap"]))
    if reference is not None:
        reference_tables, reference_checks = _reference_checks(
            frames["train"], images, reference, labels, cfg, image_cfg
        )
        tables.update(reference_tables)
        checks += reference_checks
    outcomes, raw = suite.run_checks(tables, checks, docs_dir)
    report = ImageValidationReport(
        success=all(o.success for o in outcomes),
        outcomes=outcomes,
        rows={name: len(frame) for name, frame in frames.items()},
        gx_results=raw,
        reference_rows=None if reference is None else len(reference),
        bad_files=bad_files(images, image_cfg),
    )
    log.info("image validation %s: %d of %d expectations failed", "passed" if report.success else "FAILED",
             len(report.failures), len(outcomes))  # fmt: skip
    return report


# -- checks on the files ------------------------------------------------------------------------------------


def _rule(
    table: pd.DataFrame, column: str, expectation: Any, bad: pd.Series, ok: str, what: str, show: Any
) -> _Check:
    """A check on the images table whose offending rows are `bad`; the detail names them with `show`."""
    return suite.row_check("images", table, column, expectation, bad, ok, what, show, "image")


def _file_checks(images: pd.DataFrame, cfg: ImageConfig) -> list[_Check]:
    import great_expectations.expectations as gxe

    n = f"all {len(images):,} images"
    sides = f"[{cfg.min_side}, {cfg.max_side}] pixels"
    usable = images["error"].isna()
    checks = [
        _rule(
            images,
            "error",
            gxe.ExpectColumnValuesToBeNull(column="error"),
            images["error"].notna(),
            f"{n} are complete files that decode",
            "cannot be used",
            lambda r: f"{r.origin}: {r.error} ({r.detail})",
        ),
        _rule(
            images,
            "bytes",
            gxe.ExpectColumnValuesToBeBetween(column="bytes", min_value=1),
            images["bytes"] < 1,
            f"{n} have content",
            "are empty files (0 bytes)",
            lambda r: str(r.origin),
        ),
        _rule(
            images,
            "pixels",
            gxe.ExpectColumnValuesToBeBetween(column="pixels", max_value=cfg.max_pixels),
            images["pixels"] > cfg.max_pixels,
            f"{n} have at most {cfg.max_pixels:,} pixels",
            f"declare more than image.max_pixels = {cfg.max_pixels:,} pixels (refused before decoding)",
            lambda r: f"{r.origin} ({r.width}×{r.height})",
        ),
        _rule(
            images,
            "format",
            gxe.ExpectColumnValuesToBeInSet(column="format", value_set=list(cfg.formats)),
            usable & ~images["format"].isin(cfg.formats),
            f"every format is one of {', '.join(cfg.formats)}",
            f"have a format outside image.formats ({', '.join(cfg.formats)})",
            lambda r: f"{r.origin} ({r.format})",
        ),
        _rule(
            images,
            "mode",
            gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=list(cfg.modes)),
            usable & ~images["mode"].isin(cfg.modes),
            f"every mode is one of {', '.join(cfg.modes)}",
            f"have a pixel mode outside image.modes ({', '.join(cfg.modes)})",
            lambda r: f"{r.origin} ({r.mode})",
        ),
    ]
    for side in ("width", "height"):
        values = images[side].astype("Float64")
        expectation = gxe.ExpectColumnValuesToBeBetween(
            column=side, min_value=cfg.min_side, max_value=cfg.max_side
        )
        bad = usable & ((values < cfg.min_side) | (values > cfg.max_side))
        checks.append(
            _rule(
                images,
                side,
                expectation,
                bad,
                f"every {side} is in {sides}",
                f"have a {side} outside {sides}",
                lambda r: f"{r.origin} ({r.width}×{r.height})",
            )
        )
    return checks


def _label_checks(images: pd.DataFrame, labels: list[str], cfg: ValidateConfig) -> list[_Check]:
    import great_expectations.expectations as gxe

    declared = "{" + ", ".join(labels) + "}"
    distinct = images[SHA256].nunique()
    rate = (len(images) - distinct) / len(images) if len(images) else 0.0
    repeated = images[images[SHA256].duplicated(keep="first")]
    duplicates = gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
        column=SHA256,
        min_value=max(0.0, 1.0 - cfg.max_duplicate_rate - _EPS),
        max_value=None,
        description=f"At most {cfg.max_duplicate_rate:g} of the images repeat an earlier image's content.",
    )
    return [
        _rule(
            images,
            LABEL,
            gxe.ExpectColumnValuesToNotBeNull(column=LABEL),
            images[LABEL].isna(),
            f"all {len(images):,} images have a label",
            "have no label",
            lambda r: str(r.origin),
        ),
        _rule(
            images,
            LABEL,
            gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=labels),
            images[LABEL].notna() & ~images[LABEL].isin(labels),
            f"every label is one of {declared}",
            f"have a label outside {declared}",
            lambda r: f"{r.origin} ({r.label!r})",
        ),
        _rule(
            images,
            SHA256,
            duplicates,
            pd.Series(images.index.isin(repeated.index), index=images.index),
            f"duplicate rate {rate:.2%} is within validate.max_duplicate_rate {cfg.max_duplicate_rate:g}",
            f"repeat an earlier image's content (rate {rate:.2%} > validate.max_duplicate_rate"
            f" {cfg.max_duplicate_rate:g})",
            lambda r: f"{r.origin} ({r.split})",
        ),
    ]


def _overlap(images: pd.DataFrame) -> pd.DataFrame:
    """One row per file content present in more than one split: its sha256, the splits and the files."""
    rows = []
    for sha, group in images.groupby(SHA256, sort=True):
        if group["split"].nunique() > 1:
            where = ", ".join(f"{r.origin} ({r.split})" for r in group.itertuples(index=False))
            rows.append((sha, ", ".join(sorted(group["split"].unique())), where))
    return pd.DataFrame(rows, columns=[SHA256, "splits", "files"], dtype="object")


def _overlap_check(shared: pd.DataFrame) -> _Check:
    return suite.content_overlap_check(
        shared,
        "files",
        "image",
        "no image content appears in more than one split",
        "No image (by the sha256 of its bytes) is in more than one split.",
    )


# -- against the champion's training images --------------------------------------------------------------

REFERENCE_COLUMNS = (LABEL, "width", "height", "brightness")


def _quantiles(
    current: pd.DataFrame, reference: pd.DataFrame, columns: tuple[str, ...], relative: bool
) -> pd.DataFrame:
    """Per column and quantile: the new value, the reference's and the change (relative or absolute)."""
    rows = []
    for column in columns:
        new = current[column].dropna().astype(float)
        ref = reference[column].dropna().astype(float)
        for q in suite.REFERENCE_QUANTILES:
            value = float(new.quantile(q, interpolation="nearest")) if len(new) else float("nan")
            base = float(ref.quantile(q, interpolation="nearest")) if len(ref) else float("nan")
            change = (value / base - 1 if base else float("inf")) if relative else value - base
            rows.append((f"{column} q{round(q * 100)}", value, base, change))
    return pd.DataFrame(rows, columns=["statistic", "value", "reference", "change"])


def _drift_check(table_name: str, table: pd.DataFrame, tol: float, unit: str, key: str) -> _Check:
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        shown = [
            f"{r.statistic} {r.value:.3g} (champion's data {r.reference:.3g})"
            for r in table.itertuples(index=False)
        ]
        if success:
            return 0, [], f"within ±{tol:g}{unit} of the champion's training images: {', '.join(shown)}"
        bad = [
            s
            for s, r in zip(shown, table.itertuples(index=False), strict=True)
            if not abs(r.change) <= tol + _EPS
        ]
        detail = (
            f"{len(bad)} of {len(table)} statistics moved more than ±{tol:g}{unit} ({key}): {'; '.join(bad)}"
        )
        return len(bad), bad[: suite.MAX_EXAMPLES], detail

    expectation = gxe.ExpectColumnValuesToBeBetween(
        column="change",
        min_value=-tol - _EPS,
        max_value=tol + _EPS,
        description=(
            f"Each of {', '.join(table['statistic'])} is within ±{tol:g}{unit} of the champion's data."
        ),
    )
    return _Check(table_name, "change", expectation, explain)


def _reference_checks(
    train: pd.DataFrame,
    images: pd.DataFrame,
    reference: pd.DataFrame,
    labels: list[str],
    cfg: ValidateConfig,
    image_cfg: ImageConfig,
) -> tuple[dict[str, pd.DataFrame], list[_Check]]:
    suite.require_reference(reference, REFERENCE_COLUMNS, "image classification")
    usable = images[images["error"].isna()]
    ref = reference[reference["error"].isna()] if "error" in reference.columns else reference
    shares = suite._label_shares(train, reference, labels, cfg.reference_label_tolerance)
    sizes = _quantiles(usable, ref, ("width", "height"), relative=True)
    brightness = _quantiles(usable, ref, ("brightness",), relative=False)
    size_tol, light_tol = image_cfg.reference_size_tolerance, image_cfg.reference_brightness_tolerance
    tables = {
        "reference_label_shares": shares,
        "reference_image_sizes": sizes,
        "reference_brightness": brightness,
    }
    checks = [
        suite._label_share_check(shares, cfg.reference_label_tolerance),
        _drift_check(
            "reference_image_sizes", sizes, size_tol, " (relative)", "image.reference_size_tolerance"
        ),
        _drift_check(
            "reference_brightness", brightness, light_tol, "", "image.reference_brightness_tolerance"
        ),
    ]
    return tables, checks


def bad_images(report_images: pd.DataFrame) -> pd.DataFrame:
    """The unusable images (origin, split, error, detail): what the stage writes beside the report."""
    bad = report_images[report_images["error"].notna()]
    return bad[[ORIGIN, "split", "error", "detail"]].reset_index(drop=True)


# What to do about a file, per problem ``inspect_image`` (or the snapshot check) names.
_FILE_ADVICE = {
    "zero-bytes": "the file is empty: copy it again from where it came from, or remove it from the source",
    "not-an-image": "not an image (Pillow cannot identify it): remove it from the source or put the image"
    " meant in its place",
    "corrupt": "the file is damaged: re-export it (or copy it again), or remove it from the source",
    "truncated": "the file ends before its pixels do (an interrupted copy or download): copy it again, or"
    " remove it from the source",
    "too-large": "downscale it below image.max_pixels (or raise image.max_pixels if such images are genuine)",
    "missing": "the snapshot lacks it: re-run prepare",
    "changed": "the snapshot was edited after prepare: re-run prepare",
}
_BOUND_ADVICE = {
    "format": "convert it to one of image.formats, or add its format to image.formats if it is genuine",
    "mode": "convert it to one of image.modes, or add its mode to image.modes if it is genuine",
    "size": "resize it, or widen image.min_side / image.max_side if such images are genuine",
}
BAD_FILE_COLUMNS = ["path", "split", "problem", "what_to_do"]


def bad_files(images: pd.DataFrame, cfg: ImageConfig) -> pd.DataFrame:
    """One row per file the file checks refuse (BAD_FILE_COLUMNS): the path as the source names it, its
    split, what is wrong and what to do; a file with several problems gets them joined by "; "."""
    rows = []
    for row in images.itertuples(index=False):
        problems = _problems(row, cfg)
        if problems:
            what, todo = zip(*problems, strict=True)
            rows.append([row.origin, row.split, "; ".join(what), "; ".join(dict.fromkeys(todo))])
    return pd.DataFrame(rows, columns=BAD_FILE_COLUMNS)


def _problems(row: Any, cfg: ImageConfig) -> list[tuple[str, str]]:
    """(what is wrong, what to do) for each file check `row` of the images table fails."""
    if isinstance(row.error, str):
        return [(f"{row.error}: {row.detail}", _FILE_ADVICE.get(row.error, _FILE_ADVICE["corrupt"]))]
    out = []
    if row.format not in cfg.formats:
        out.append((f"format {row.format} is not in image.formats", _BOUND_ADVICE["format"]))
    if row.mode not in cfg.modes:
        out.append((f"mode {row.mode} is not in image.modes", _BOUND_ADVICE["mode"]))
    if not all(cfg.min_side <= side <= cfg.max_side for side in (row.width, row.height)):
        bounds = f"[{cfg.min_side}, {cfg.max_side}]"
        out.append((f"{row.width}×{row.height} pixels: a side outside {bounds}", _BOUND_ADVICE["size"]))
    return out
