"""gate stage: decide whether the challenger may replace the champion.

``decide`` is pure: metrics in, a Decision with every check's value, threshold and verdict out. The
rules: the metric must exist and be a number (NaN fails); the absolute floor ``gate.min_accuracy``
always applies; when a champion exists, the challenger must beat it on the same test rows by at least
``gate.min_improvement``. With no champion yet, the floor alone decides (the first-model rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.config import GateConfig
from tasks.evaluate import Evaluation
from tasks.paths import ProjectPaths


class Scored(Protocol):
    @property
    def accuracy(self) -> float: ...


class GateRejected(RuntimeError):
    """The challenger did not pass the gate; the message lists the failed checks and what to do."""


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    passed: bool
    checks: tuple[Check, ...]
    challenger_accuracy: float
    champion_accuracy: float | None
    champion_version: str | None

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        if self.passed:
            return f"gate passed: challenger accuracy {self.challenger_accuracy:.4f}"
        return "gate failed: " + "; ".join(c.detail for c in self.failed)

    def report_markdown(self) -> str:
        def fmt(x: float | None) -> str:
            return "—" if x is None else f"{x:.4f}"

        verdict = "**PASSED**: the challenger may be promoted" if self.passed else "**FAILED**: not promoted"
        against = (
            f"champion v{self.champion_version} (accuracy {fmt(self.champion_accuracy)})"
            if self.champion_version
            else "no champion yet: the first-model rule applies (floor only)"
        )
        rows = "\n".join(
            f"| {c.name} | {fmt(c.value)} | {fmt(c.threshold)} | {'pass' if c.passed else 'FAIL'} "
            f"| {c.detail} |"
            for c in self.checks
        )
        return (
            f"# Evaluation gate\n\n{verdict}\n\nCompared against: {against}.\n\n"
            "| check | value | threshold | verdict | detail |\n|---|---|---|---|---|\n"
            f"{rows}\n"
        )


def _number(x: float | None) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def decide(
    challenger: Scored, champion: Scored | None, policy: GateConfig, champion_version: str | None = None
) -> Decision:
    """Apply the gate policy to test accuracy measured on the same rows for both models."""
    acc = getattr(challenger, "accuracy", None)
    checks = [
        Check(
            "metric present",
            acc if _number(acc) else None,
            None,
            _number(acc),
            "challenger test accuracy is a number" if _number(acc) else f"challenger accuracy is {acc!r}",
        )
    ]
    if _number(acc):
        ok = acc >= policy.min_accuracy
        checks.append(
            Check(
                "accuracy floor",
                acc,
                policy.min_accuracy,
                ok,
                f"accuracy {acc:.4f} {'>=' if ok else '<'} floor {policy.min_accuracy:.4f}"
                " (gate.min_accuracy)",
            )
        )
    champ_acc = getattr(champion, "accuracy", None) if champion is not None else None
    if champion is None:
        checks.append(Check("first model", None, None, True, "no champion yet: the floor alone decides"))
    elif not _number(champ_acc):
        checks.append(
            Check("improvement", None, policy.min_improvement, False, f"champion accuracy is {champ_acc!r}")
        )
    elif _number(acc):
        gain = acc - champ_acc
        ok = gain >= policy.min_improvement - 1e-12  # tolerate float noise at an exact threshold
        checks.append(
            Check(
                "improvement over champion",
                gain,
                policy.min_improvement,
                ok,
                f"gain {gain:+.4f} over champion v{champion_version} ({champ_acc:.4f}) "
                f"{'>=' if ok else '<'} {policy.min_improvement:+.4f} (gate.min_improvement)",
            )
        )
    return Decision(
        passed=all(c.passed for c in checks),
        checks=tuple(checks),
        challenger_accuracy=acc if _number(acc) else float("nan"),
        champion_accuracy=champ_acc if _number(champ_acc) else None,
        champion_version=champion_version,
    )


def rejection_message(decision: Decision, version: str | None) -> str:
    registered = f"Version {version} stays registered as 'challenger'; " if version else ""
    champion = (
        f"'champion' stays on v{decision.champion_version}."
        if decision.champion_version
        else "there is still no 'champion'."
    )
    return (
        f"{decision.summary()}. {registered}{champion} To promote anyway, improve the data or training "
        "parameters, or relax gate.min_accuracy / gate.min_improvement in params.yaml deliberately."
    )


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(paths: ProjectPaths, evaluation: Evaluation, policy: GateConfig) -> Decision:
    """Decide, write reports/gate.md and publish it as a Prefect artifact; never raises on a failed gate
    (the version is registered as a challenger first; promote_task raises)."""
    decision = decide(evaluation.challenger, evaluation.champion, policy, evaluation.champion_version)
    paths.gate_report.parent.mkdir(parents=True, exist_ok=True)
    paths.gate_report.write_text(decision.report_markdown())
    create_markdown_artifact(
        markdown=decision.report_markdown(), key="gate-report", description="Evaluation gate"
    )
    return decision
