"""drift stage: how far this run's training data has moved from the champion's training data.

Validation judges the new data on its own; drift compares it with what the deployed model (the champion)
was trained on. Four checks, each with a policy from the ``drift`` section of params.yaml
(``ignore``: not computed; ``warn``: drift is reported as a warning; ``block``: drift stops the run):

* ``label``: population stability index of the declared labels' shares,
  ``PSI = sum_k (q_k - p_k) * ln(q_k / p_k)`` with reference shares p, current shares q, each share floored
  at ``EPSILON`` so an empty class stays finite; drift when ``PSI > drift.max_label_psi``. A chi-square
  test of the 2 x K count table is reported for information only (with many rows it flags tiny shifts).
* ``length``: two-sample Kolmogorov-Smirnov test of the text lengths in characters; drift when
  ``p < drift.alpha``. The statistic is KS's D (largest gap between the two length CDFs).
* ``oov``: out-of-vocabulary rate, words being lower-cased ``\\w+`` tokens. The reference is split into two
  random halves A and B (seeded); the vocabulary is A's words. ``rate(X)`` = share of X's word tokens not
  in that vocabulary. Statistic = ``rate(current) - rate(B)``: the rise over the rate that new text from
  the *same* distribution already has (new names, typos). Drift when it exceeds ``drift.max_oov_increase``.
* ``embedding``: sentence embeddings of up to ``drift.sample_rows`` random rows per side (seeded) from the
  pretrained encoder (mean pooling over the attention mask, L2-normalised, texts cut at ``MAX_LENGTH``
  tokens, linear layers int8-quantized for CPU speed). Statistic = squared maximum mean discrepancy
  (biased V-statistic) with an RBF kernel whose bandwidth is the median pairwise distance of the pooled
  sample; p-value = share of ``drift.permutations``
  random relabellings of the pooled sample with an MMD² at least as large (``(1 + count) / (1 + B)``).
  Drift when ``p < drift.alpha``. Skipped when no encoder folder is given.

torch, transformers, scipy and matplotlib are imported inside the functions: flow definitions and the CLI
import this module without paying for them.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task

from tasks import caching
from tasks.champion import load_champion
from tasks.config import Config, ConfigError, DriftConfig, load_config
from tasks.download import load_base_ref
from tasks.drift_checks import STAT_NAMES, DriftCheck, ignored, num, psi, skipped
from tasks.kinds import load_task, task_of
from tasks.paths import ProjectPaths
from tasks.prepare import LABEL
from tasks.reports import ReportedStop
from tasks.runtime import configure_environment, stage_logging

if TYPE_CHECKING:
    from tasks.kinds.base import TaskKind

logger = logging.getLogger("transferline.drift")

CHECKS = ("label", "length", "oov", "embedding")


# -- report ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftReport:
    checks: tuple[DriftCheck, ...]
    blocked: bool  # some check with policy block found drift
    warnings: list[str]  # one line per check with policy warn that found drift
    reference_rows: int
    current_rows: int

    @property
    def blocking(self) -> tuple[DriftCheck, ...]:
        return tuple(c for c in self.checks if c.status == "blocking")

    @property
    def drifted(self) -> tuple[DriftCheck, ...]:
        return tuple(c for c in self.checks if c.drifted)

    def check(self, name: str) -> DriftCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no drift check named {name!r}; checks: {', '.join(c.name for c in self.checks)}")

    def verdict(self) -> str:
        if self.blocked:
            return "BLOCKED"
        return "WARNING" if self.warnings else "no drift"

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "verdict": self.verdict(),
                "blocked": self.blocked,
                "warnings": list(self.warnings),
                "reference_rows": self.reference_rows,
                "current_rows": self.current_rows,
                "checks": [{**asdict(c), "status": c.status} for c in self.checks],
            }
        )

    def summary_markdown(self) -> str:
        lines = [
            f"# Data drift: {self.verdict()}",
            "",
            f"Reference (the champion's training data): {self.reference_rows:,} rows; current (this run's"
            f" training data): {self.current_rows:,} rows.  ",
            f"{len(self.drifted)} of {sum(c.statistic is not None for c in self.checks)} computed checks"
            " found drift.",
            "",
            "| Check | Statistic | Drift if | p-value | Policy | Verdict | Detail |",
            "|---|---|---|---|---|---|---|",
        ]
        verdicts = {
            "ignored": "ignored",
            "skipped": "skipped",
            "ok": "no drift",
            "warning": "**drift (warning)**",
            "blocking": "**DRIFT (blocks)**",
        }
        for c in self.checks:
            stat = "" if c.statistic is None else f"{STAT_NAMES.get(c.name, '')} {num(c.statistic)}"
            p = "" if c.p_value is None else num(c.p_value)
            lines.append(
                f"| {c.name} | {stat} | {c.condition()} | {p} | {c.policy} | {verdicts[c.status]}"
                f" | {_md_cell(c.detail)} |"
            )
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {_md_cell(w)}" for w in self.warnings]
        if self.blocked:
            lines += ["", "## Blocking", ""]
            lines += [f"- **{c.name}**: {c.headline()}: {_md_cell(c.detail)}" for c in self.blocking]
        if self.drifted:
            lines += ["", "## What to do", "", *[f"- {h}" for h in _hints(self)]]
        return "\n".join(lines) + "\n"

    def error_message(self, report_dir: Path | None = None) -> str:
        where = f"{Path(report_dir).as_posix()}/" if report_dir is not None else "reports/drift/"
        lines = [
            f"data drift blocks this run: {len(self.blocking)} check(s) with policy 'block' found drift"
            f" between the champion's training data ({self.reference_rows:,} rows) and this run's"
            f" ({self.current_rows:,} rows):"
        ]
        lines += [f"  - {c.name}: {c.headline()}. {c.detail}" for c in self.blocking]
        lines.append("What to do:")
        lines += [f"  - {h}" for h in _hints(self, where)]
        return "\n".join(lines)


def _hints(report: DriftReport, where: str = "reports/drift/") -> list[str]:
    hints = [
        f"inspect {where} (summary.md, report.json, drift.png) to see what changed;",
        "if the new data is wrong (a broken export, another source, a filter), fix the data"
        " (data.source) and re-run;",
    ]
    if report.blocked:
        keys = " / ".join(f"drift.{c.name}" for c in report.blocking)
        hints.append(
            f"if the change is real and intended, set {keys}: warn in params.yaml deliberately and re-run:"
            " once promoted, the new champion's data becomes the reference."
        )
    else:
        hints.append(
            "if the change is real and intended, nothing is needed: warnings do not stop the run, and once"
            " promoted, the new champion's data becomes the reference."
        )
    return hints


class DriftBlocked(ReportedStop):
    """A check with policy ``block`` found drift; ``str(err)`` names each check and what to do."""

    report: DriftReport


# -- core -----------------------------------------------------------------------------------------------
def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    labels: Sequence[str],
    cfg: DriftConfig,
    encoder_dir: Path | None,
    kind: TaskKind | None = None,
    snapshots: tuple[Path, Path] = (Path(), Path()),
) -> DriftReport:
    """Compare ``current`` with ``reference`` (both with the task's input column and ``label``); see
    module doc. The label shares are compared for every task, the rest is the task's (`kind`, default
    text: length, vocabulary, embeddings; images: embeddings of the files in `snapshots`).

    ``encoder_dir`` is a Hugging Face model folder (weights + processor) used for the embedding check;
    None skips that check. Nothing is written to disk.
    """
    kind = kind or load_task("text-classification", None)
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in (kind.input_column, LABEL) if c not in frame.columns]
        if missing:
            raise ValueError(f"drift: the {name} data has no {' / '.join(missing)} column(s)")
    labels = list(labels)
    checks = [ignored("label", cfg) or label_check(reference, current, labels, cfg)]
    checks += kind.drift_checks(reference, current, snapshots, cfg, encoder_dir)
    warnings = [f"{c.name} drift: {c.headline()}. {c.detail}" for c in checks if c.status == "warning"]
    report = DriftReport(
        checks=tuple(checks),
        blocked=any(c.status == "blocking" for c in checks),
        warnings=warnings,
        reference_rows=len(reference),
        current_rows=len(current),
    )
    logger.info(
        "drift %s: %s",
        report.verdict(),
        ", ".join(f"{c.name} {c.status}" for c in checks),
    )
    return report


def label_check(
    reference: pd.DataFrame, current: pd.DataFrame, labels: list[str], cfg: DriftConfig
) -> DriftCheck:
    from scipy.stats import chi2_contingency

    ref = reference[LABEL].value_counts().reindex(labels, fill_value=0).to_numpy(dtype=float)
    cur = current[LABEL].value_counts().reindex(labels, fill_value=0).to_numpy(dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        side = "reference" if ref.sum() == 0 else "current"
        return skipped("label", cfg, f"the {side} data has no row with a declared label")
    p, q = ref / ref.sum(), cur / cur.sum()
    value = psi(p, q)
    table = np.vstack([ref, cur])[:, (ref + cur) > 0]
    chi_p = 1.0 if table.shape[1] < 2 else float(chi2_contingency(table).pvalue)
    shares = ", ".join(f"{lab} {a:.1%} → {b:.1%}" for lab, a, b in zip(labels, p, q, strict=True))
    others = {"reference": len(reference) - int(ref.sum()), "current": len(current) - int(cur.sum())}
    undeclared = [f"{n:,} {side}" for side, n in others.items() if n]
    extra = f"; rows with undeclared labels not counted: {', '.join(undeclared)}" if undeclared else ""
    return DriftCheck(
        "label",
        value,
        cfg.max_label_psi,
        chi_p,
        value > cfg.max_label_psi,
        cfg.label,
        f"label shares reference → current: {shares}; chi-square p {num(chi_p)} (for information){extra}",
    )


# -- plot -----------------------------------------------------------------------------------------------
def plot_drift(
    reference: pd.DataFrame, current: pd.DataFrame, labels: Sequence[str], path: Path, kind: TaskKind
) -> None:
    """One PNG: label shares side by side (bars) and the task's own panel (text: length histograms),
    reference vs current."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    labels = list(labels)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = np.arange(len(labels))
    sides = (("reference", reference), ("current", current))
    for offset, (name, frame) in zip((-0.2, 0.2), sides, strict=True):
        counts = frame[LABEL].value_counts().reindex(labels, fill_value=0)
        shares = counts / max(1, int(counts.sum()))
        left.bar(xs + offset, shares.to_numpy(), width=0.4, label=f"{name} ({len(frame):,})")
    left.set_xticks(xs, labels)
    left.set_ylabel("share of rows")
    left.set_title("label shares")
    left.legend()
    if not kind.drift_panel(right, reference, current):
        right.set_visible(False)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- helpers --------------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- stage shell ----------------------------------------------------------------------------------------
def run_drift(
    paths: ProjectPaths, cfg: Config, reference: pd.DataFrame | None, encoder_dir: Path | None
) -> DriftReport | None:
    """Compare the prepared train split with ``reference`` and write reports/drift/.

    ``reference`` is the champion's training split (None when there is no champion yet: then only a short
    summary.md is written and None returned). Writes report.json, summary.md and drift.png, replacing the
    folder's previous contents, and raises DriftBlocked after writing when a blocking check found drift.
    """
    from tasks.prepare import read_split

    current = read_split(paths, "train")
    out = paths.drift_dir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if reference is None:
        (out / "summary.md").write_text(
            "# Data drift: not checked\n\nNo champion yet: nothing to compare this run's training data"
            f" ({len(current):,} rows) with.\n",
            encoding="utf-8",
        )
        logger.info("drift: no champion yet, nothing to compare")
        return None
    kind = task_of(cfg)
    snapshots = (Path(reference.attrs.get("snapshot", ".")), paths.prepared_dir)
    report = detect_drift(reference, current, cfg.data.labels, cfg.drift, encoder_dir, kind, snapshots)
    result = {
        **report.to_dict(),
        "labels": list(cfg.data.labels),
        "thresholds": cfg.drift.model_dump(mode="json"),
        "encoder_dir": None if encoder_dir is None else str(encoder_dir),
    }
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    (out / "report.json").write_text(text, encoding="utf-8")
    (out / "summary.md").write_text(report.summary_markdown(), encoding="utf-8")
    plot_drift(reference, current, cfg.data.labels, out / "drift.png", kind)
    if report.blocked:
        raise DriftBlocked(report, paths.display(out))
    return report


@task(name="drift", cache_policy=caching.DRIFT)
def drift_task(
    paths: ProjectPaths, cfg: Config, reference: pd.DataFrame | None, encoder_dir: Path | None
) -> DriftReport | None:
    """Prefect task: run_drift, publishing the summary as the "drift-report" markdown artifact."""
    from prefect.artifacts import create_markdown_artifact

    try:
        report = run_drift(paths, cfg, reference, encoder_dir)
    except DriftBlocked as err:
        create_markdown_artifact(
            markdown=err.report.summary_markdown(), key="drift-report", description="data drift"
        )
        for check in err.report.blocking:
            logger.error("drift blocks the run: %s: %s", check.name, check.headline())
        raise
    if report is None:
        create_markdown_artifact(
            markdown=paths.drift_dir.joinpath("summary.md").read_text(encoding="utf-8"),
            key="drift-report",
            description="data drift",
        )
        return None
    for warning in report.warnings:
        logger.warning("%s", warning)
    create_markdown_artifact(markdown=report.summary_markdown(), key="drift-report", description="data drift")
    return report


def main() -> None:
    """DVC stage entry point: ``python -m tasks.drift`` from the project root, against the champion the
    champion stage resolved, with the base model the download stage resolved as the encoder."""
    configure_environment()
    stage_logging()
    paths = ProjectPaths.at(".")
    try:
        cfg = load_config(paths.params)
        champion = load_champion(paths)
        reference = champion.reference() if champion else None
        report = run_drift(paths, cfg, reference, load_base_ref(paths).path)
    except (ConfigError, FileNotFoundError, DriftBlocked) as err:
        print(f"drift: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if report is None:
        print("drift: no champion yet, nothing to compare")
        return
    for warning in report.warnings:
        print(f"drift: {warning}")
    print(f"drift: {len(report.checks)} checks; report in {paths.rel(paths.drift_dir)}/")


if __name__ == "__main__":
    main()
