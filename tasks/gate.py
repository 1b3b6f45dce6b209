"""gate stage: decide whether the challenger may replace the champion.

``decide`` is pure: evaluation results in, a Decision with every check's value, threshold and verdict
out. The policy (``gate`` in params.yaml):

- every check reads the results' headline metric: accuracy, or micro entity F1 for token classification
  (``EvalResult.metric``);
- the challenger's accuracy must exist and be a finite number, and reach ``gate.min_accuracy``;
- the serving budgets always apply: p95 latency <= ``gate.max_latency_ms`` (what a call takes on an
  idle core, however busy the machine was: tasks/inference.py ``measure_latency``) and weights size <=
  ``gate.max_weights_mb``; unmeasured budgets fail (a gate must not pass blindly);
- with a champion, both models must have been scored on the same test rows, and then
    * ``superiority``: the paired-bootstrap interval of the accuracy gain lies above
      ``gate.min_improvement`` and McNemar's exact test finds the challenger significantly better
      (p < ``gate.alpha``, b > c);
    * ``non_inferiority``: the interval's lower end lies above ``-gate.margin``;
    * no class loses more than ``gate.max_class_drop`` recall;
    * entity F1 instead: the paired bootstrap resamples sentences (tasks/kinds/token_metrics.py), no
      McNemar (F1 has no right/wrong outcome per row), and no entity type loses more than
      ``gate.max_class_drop`` F1;
    * on the retention set (when measured) the challenger loses at most ``gate.max_forgetting`` accuracy;
    * an unusable champion metric fails (never promote blindly);
- with no champion yet, the floor and the budgets alone decide (the first-model rule).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks import caching
from tasks.config import Config, ConfigError, GateConfig, load_config
from tasks.evaluate import (
    ACCURACY,
    F1,
    METRIC_NAMES,
    Budgets,
    EvalResult,
    Evaluation,
    Retention,
    read_evaluation,
)
from tasks.kinds.token_metrics import f1_drops, paired_bootstrap_f1
from tasks.paths import ProjectPaths
from tasks.runtime import configure_environment, stage_logging
from tasks.stats import Interval, McNemar, mcnemar, paired_bootstrap_ci, recall_drops

FIRST_MODEL = "first model: no champion yet — floor and budgets only"
_EPS = 1e-12  # float noise tolerated at an exact "<=" threshold


class GateRejected(RuntimeError):
    """The challenger did not pass the gate; the message lists the failed checks and what to do."""


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str
    interval: tuple[float, float] | None = None  # confidence interval behind `value`, when there is one
    param: str | None = None  # the params.yaml key that sets `threshold`


@dataclass(frozen=True)
class Decision:
    passed: bool
    checks: tuple[Check, ...]
    challenger_accuracy: float
    champion_accuracy: float | None
    champion_version: str | None
    mode: str = "superiority"
    first_model: bool = True
    interval: Interval | None = None  # paired bootstrap CI of challenger - champion accuracy
    mcnemar: McNemar | None = None
    policy: GateConfig | None = field(default=None, repr=False)
    budgets: Budgets | None = None  # as measured, with how the latency was measured
    metric: str = ACCURACY  # the headline the *_accuracy fields and the interval hold (EvalResult.metric)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        if not self.passed:
            return "gate failed: " + "; ".join(c.detail for c in self.failed)
        text = f"gate passed: challenger {METRIC_NAMES[self.metric]} {self.challenger_accuracy:.4f}"
        if self.first_model:
            return f"{text} (first model: floor and budgets only)"
        if self.interval is not None:
            text += f", {_gain(self.interval)} vs champion {_v(self.champion_version)}"
        return text

    def comparison_lines(self) -> list[str]:
        """The confidence interval and McNemar lines of the report (empty without a paired comparison)."""
        lines = []
        if self.interval is not None:
            how = (
                f"paired bootstrap, {self.policy.bootstrap_samples} resamples of the shared test rows, "
                f"seed {self.policy.seed}"
                if self.policy is not None
                else "paired bootstrap over the shared test rows"
            )
            what = METRIC_NAMES[self.metric]
            lines.append(f"{what[0].upper()}{what[1:]} {_gain(self.interval)} ({how}).")
        if self.mcnemar is not None:
            m = self.mcnemar
            lines.append(
                f"McNemar ({m.method}): p={m.p_value:.3g}; b={m.b} rows only the challenger gets right, "
                f"c={m.c} rows only the champion gets right."
            )
        return lines

    def latency_line(self) -> str | None:
        """How the latency budget's figure was measured (None when it was not, or by an older run)."""
        b = self.budgets
        if b is None or not b.latency_method:
            return None
        line = f"Latency: {b.latency_method}."
        if b.champion_latency_p95_ms is not None:
            champion = _v(self.champion_version)
            line += f" Champion {champion} in the same windows: {b.champion_latency_p95_ms:.1f} ms."
        return line

    def report_markdown(self) -> str:
        verdict = "**PASSED**: the challenger may be promoted" if self.passed else "**FAILED**: not promoted"
        if self.first_model:
            against = "no champion yet, so the first-model rule applies (floor and budgets only)"
        else:
            what = METRIC_NAMES[self.metric]
            against = f"champion {_v(self.champion_version)} ({what} {_fmt(self.champion_accuracy)})"
        mode = f"Mode: `{self.mode}`.\n\n" if not self.first_model else ""
        lines = [*self.comparison_lines(), self.latency_line()]
        comparison = "".join(f"{line}\n\n" for line in lines if line)
        rows = "\n".join(
            f"| {c.name} | {_fmt(c.value)} | {_fmt(c.threshold)} | {'pass' if c.passed else 'FAIL'} "
            f"| {c.detail} |"
            for c in self.checks
        )
        return (
            f"# Evaluation gate\n\n{verdict}\n\nCompared against: {against}.\n\n{mode}{comparison}"
            "| check | value | threshold | verdict | detail |\n|---|---|---|---|---|\n"
            f"{rows}\n"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (non-finite numbers become null) for logging, e.g. mlflow.log_dict."""
        return _jsonable(
            {
                "passed": self.passed,
                "mode": self.mode,
                "metric": self.metric,
                "first_model": self.first_model,
                "challenger_accuracy": self.challenger_accuracy,
                "champion_accuracy": self.champion_accuracy,
                "champion_version": self.champion_version,
                "interval": asdict(self.interval) if self.interval is not None else None,
                "mcnemar": asdict(self.mcnemar) if self.mcnemar is not None else None,
                "checks": [asdict(c) for c in self.checks],
                "failed": [c.name for c in self.failed],
                "policy": self.policy.model_dump(mode="json") if self.policy is not None else None,
                "budgets": asdict(self.budgets) if self.budgets is not None else None,
            }
        )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, int):
        return str(x)
    return f"{x:.2e}" if 0 < abs(x) < 1e-4 else f"{x:.4f}"  # small p-values stay visible


def _v(version: str | None) -> str:
    return f"v{version}" if version else "(unversioned)"


def _level(interval: Interval) -> str:
    return f"{interval.level * 100:g}%"


def _gain(interval: Interval) -> str:
    return f"gain {interval.estimate:+.4f} [{_level(interval)} CI {interval.low:+.4f}, {interval.high:+.4f}]"


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _headline(result: object) -> object:
    """The value of a result's headline metric (its accuracy unless it names another), None when absent."""
    return getattr(result, getattr(result, "metric", ACCURACY), None)


def _same_rows(challenger: EvalResult, champion: EvalResult) -> str | None:
    """None when both were scored on the same rows (and metric), else why not."""
    if challenger.metric != champion.metric:
        mine, theirs = METRIC_NAMES[challenger.metric], METRIC_NAMES[champion.metric]
        return f"the challenger was scored on {mine}, the champion on {theirs}"
    if len(challenger.truth) != len(champion.truth):
        return f"challenger scored {len(challenger.truth)} rows, champion {len(champion.truth)}"
    if len(challenger.predictions) != len(challenger.truth) or len(champion.predictions) != len(
        champion.truth
    ):
        return "predictions and labels differ in length"
    differ = sum(t != u for t, u in zip(challenger.truth, champion.truth, strict=True))
    if differ:
        return f"the true labels differ on {differ} of {len(challenger.truth)} rows"
    if not challenger.truth:
        return "no rows to compare"
    return None


def _budget_checks(budgets: Budgets | None, policy: GateConfig) -> list[Check]:
    if budgets is None:
        return [
            Check(
                "budgets",
                None,
                None,
                False,
                "budgets not measured (p95 latency, weights size): a gate must not pass blindly",
            )
        ]
    checks = []
    for name, value, limit, unit, param in (
        ("latency budget", budgets.latency_p95_ms, policy.max_latency_ms, "ms", "gate.max_latency_ms"),
        ("weights budget", budgets.weights_mb, policy.max_weights_mb, "MB", "gate.max_weights_mb"),
    ):
        what = "p95 latency" if unit == "ms" else "weights size"
        if not _number(value):
            checks.append(Check(name, None, limit, False, f"{what} not measured ({value!r})"))
            continue
        ok = value <= limit + _EPS
        checks.append(
            Check(
                name,
                float(value),
                limit,
                ok,
                f"{what} {value:.1f} {unit} {'<=' if ok else '>'} {limit:g} {unit} ({param})",
                param=param,
            )
        )
    return checks


def _comparison_checks(
    challenger: EvalResult, champion: EvalResult, policy: GateConfig, version: str
) -> tuple[list[Check], Interval | None, McNemar | None]:
    reason = _same_rows(challenger, champion)
    if reason is not None:
        return [Check("same rows", None, None, False, f"not the same rows: {reason}")], None, None
    n = len(challenger.truth)
    checks = [Check("same rows", n, None, True, f"both models scored on the same {n} test rows")]
    if challenger.metric == F1:
        more, ci = _f1_checks(challenger, champion, policy, version)
        return checks + more, ci, None
    a, b = challenger.correct(), champion.correct()
    ci = paired_bootstrap_ci(a, b, samples=policy.bootstrap_samples, alpha=policy.alpha, seed=policy.seed)
    test = mcnemar(a, b)
    gain = f"{_gain(ci)} over champion {version}"
    mc = f"McNemar p={test.p_value:.3g} (b={test.b}, c={test.c})"
    bounds = (ci.low, ci.high)
    if policy.mode == "superiority":
        ok = ci.low > policy.min_improvement
        checks.append(
            Check(
                "improvement over champion",
                ci.low,
                policy.min_improvement,
                ok,
                f"{gain}: CI low {'>' if ok else '<='} {policy.min_improvement:+.4f} (gate.min_improvement)",
                interval=bounds,
                param="gate.min_improvement",
            )
        )
        significant = test.p_value < policy.alpha
        ok = significant and test.b > test.c
        if not significant:
            why = f">= {policy.alpha:g}, not significant"
        elif ok:
            why = f"< {policy.alpha:g}, challenger better"
        else:
            why = f"< {policy.alpha:g} but the champion is better"
        checks.append(
            Check("McNemar", test.p_value, policy.alpha, ok, f"{mc} {why} (gate.alpha)", param="gate.alpha")
        )
    else:
        ok = ci.low > -policy.margin
        checks.append(
            Check(
                "non-inferiority",
                ci.low,
                -policy.margin,
                ok,
                f"{gain}: CI low {'>' if ok else '<='} {-policy.margin:+.4f} (-gate.margin)",
                interval=bounds,
                param="gate.margin",
            )
        )
        checks.append(
            Check(
                "McNemar",
                test.p_value,
                None,
                True,
                f"{mc} (for information; not required in non_inferiority)",
            )
        )
    drops = recall_drops(challenger, champion)
    worst = max(drops, key=lambda k: drops[k])
    drop = drops[worst]
    ok = drop <= policy.max_class_drop + _EPS
    checks.append(
        Check(
            "class recall",
            drop,
            policy.max_class_drop,
            ok,
            f"worst class {worst!r}: recall {champion.per_class[worst].recall:.4f} -> "
            f"{champion.per_class[worst].recall - drop:.4f} (drop {drop:+.4f}) "
            f"{'<=' if ok else '>'} {policy.max_class_drop:.4f} (gate.max_class_drop)",
            param="gate.max_class_drop",
        )
    )
    return checks, ci, test


def _f1_checks(
    challenger: EvalResult, champion: EvalResult, policy: GateConfig, version: str
) -> tuple[list[Check], Interval]:
    """Entity results: the paired bootstrap of the micro-F1 difference over sentences (McNemar needs one
    right/wrong outcome per row, which F1 has not) and the per-type F1 drops."""
    import numpy as np

    ci = paired_bootstrap_f1(
        np.asarray(challenger.counts), np.asarray(champion.counts),
        samples=policy.bootstrap_samples, alpha=policy.alpha, seed=policy.seed,
    )  # fmt: skip
    if policy.mode == "superiority":
        name, threshold, param, shown = (
            "improvement over champion",
            policy.min_improvement,
            "gate.min_improvement",
            "gate.min_improvement",
        )
    else:
        name, threshold, param, shown = "non-inferiority", -policy.margin, "gate.margin", "-gate.margin"
    ok = ci.low > threshold
    checks = [
        Check(
            name,
            ci.low,
            threshold,
            ok,
            f"entity F1 {_gain(ci)} over champion {version}: CI low {'>' if ok else '<='} {threshold:+.4f} "
            f"({shown})",
            interval=(ci.low, ci.high),
            param=param,
        )
    ]
    drops = f1_drops(challenger.per_class, champion.per_class)
    worst = max(drops, key=lambda k: drops[k])
    drop, before = drops[worst], champion.per_class[worst].f1
    ok = drop <= policy.max_class_drop + _EPS
    checks.append(
        Check(
            "type F1",
            drop,
            policy.max_class_drop,
            ok,
            f"worst type {worst!r}: F1 {before:.4f} -> {before - drop:.4f} (drop {drop:+.4f}) "
            f"{'<=' if ok else '>'} {policy.max_class_drop:.4f} (gate.max_class_drop)",
            param="gate.max_class_drop",
        )
    )
    return checks, ci


def _retention_check(retention: Retention | None, policy: GateConfig) -> Check:
    param = "gate.max_forgetting"
    if retention is None:
        return Check(
            "retention",
            None,
            policy.max_forgetting,
            True,
            "no retention set available: forgetting not checked",
        )
    old, new = _headline(retention.champion), _headline(retention.challenger)
    what = METRIC_NAMES[retention.challenger.metric]
    if not (_number(old) and _number(new)):
        return Check(
            "retention",
            None,
            policy.max_forgetting,
            False,
            f"retention {what} not measured (challenger {new!r}, champion {old!r})",
            param=param,
        )
    reason = _same_rows(retention.challenger, retention.champion)
    if reason is not None:
        return Check(
            "retention", None, policy.max_forgetting, False, f"retention set: not the same rows: {reason}"
        )
    forgetting = old - new
    ok = forgetting <= policy.max_forgetting + _EPS
    return Check(
        "retention",
        forgetting,
        policy.max_forgetting,
        ok,
        f"retention {what} {old:.4f} -> {new:.4f} on {retention.challenger.n} rows (forgetting "
        f"{forgetting:+.4f}) {'<=' if ok else '>'} {policy.max_forgetting:.4f} ({param})",
        param=param,
    )


def decide(
    challenger: EvalResult,
    champion: EvalResult | None,
    policy: GateConfig,
    *,
    champion_version: str | None = None,
    retention: Retention | None = None,
    budgets: Budgets | None = None,
) -> Decision:
    """Apply the gate policy to the results' headline metric (accuracy, or entity F1: EvalResult.metric);
    the champion (when any) must have been scored on the challenger's rows."""
    metric = getattr(challenger, "metric", ACCURACY)
    what = METRIC_NAMES[metric]
    acc = _headline(challenger)
    has_acc = _number(acc)
    checks = [
        Check(
            "metric present",
            float(acc) if has_acc else None,
            None,
            has_acc,
            f"challenger test {what} is a number"
            if has_acc
            else f"challenger {what} is {acc!r}: nothing else can be judged",
        )
    ]
    if has_acc:
        ok = acc >= policy.min_accuracy
        checks.append(
            Check(
                f"{what} floor",
                float(acc),
                policy.min_accuracy,
                ok,
                f"{what} {acc:.4f} {'>=' if ok else '<'} floor {policy.min_accuracy:.4f} (gate.min_accuracy)",
                param="gate.min_accuracy",
            )
        )
    checks += _budget_checks(budgets, policy)

    champ_acc = _headline(champion) if champion is not None else None
    interval = test = None
    version = _v(champion_version)
    if champion is None:
        checks.append(Check("first model", None, None, True, FIRST_MODEL))
    else:
        if not _number(champ_acc):
            checks.append(
                Check(
                    "champion metric",
                    None,
                    None,
                    False,
                    f"champion {version} {what} is {champ_acc!r}: never promote blindly",
                )
            )
        elif has_acc:
            more, interval, test = _comparison_checks(challenger, champion, policy, version)
            checks += more
        checks.append(_retention_check(retention, policy))
    return Decision(
        passed=all(c.passed for c in checks),
        checks=tuple(checks),
        challenger_accuracy=float(acc) if has_acc else float("nan"),
        champion_accuracy=float(champ_acc) if _number(champ_acc) else None,
        champion_version=champion_version,
        mode=policy.mode,
        first_model=champion is None,
        interval=interval,
        mcnemar=test,
        policy=policy,
        budgets=budgets,
        metric=metric,
    )


def rejection_message(decision: Decision, version: str | None) -> str:
    registered = f"Version {version} stays registered as 'challenger'; " if version else ""
    champion = (
        f"'champion' stays on v{decision.champion_version}."
        if decision.champion_version
        else "there is still no 'champion'."
    )
    params = list(dict.fromkeys(c.param for c in decision.failed if c.param))
    relax = f"or relax {', '.join(params)} in params.yaml deliberately" if params else "or fix the evaluation"
    return (
        f"{decision.summary()}. {registered}{champion} To promote anyway, improve the data or training "
        f"parameters, {relax}."
    )


def run_gate(paths: ProjectPaths, cfg: Config, evaluation: Evaluation) -> Decision:
    """Decide and write reports/gate.md and reports/gate.json; a failed gate is a decision, not an error
    (the flow registers the version as a challenger first; promote_task raises)."""
    decision = decide(
        evaluation.challenger,
        evaluation.champion,
        cfg.gate,
        champion_version=evaluation.champion_version,
        retention=evaluation.retention,
        budgets=evaluation.budgets,
    )
    paths.gate_report.parent.mkdir(parents=True, exist_ok=True)
    paths.gate_report.write_text(decision.report_markdown())
    paths.gate_json.write_text(json.dumps(decision.to_dict(), indent=2, sort_keys=True) + "\n")
    return decision


@task(name="gate", cache_policy=caching.GATE)
def gate_task(paths: ProjectPaths, cfg: Config, evaluation: Evaluation) -> Decision:
    """run_gate, publishing the report as the "gate-report" Prefect artifact."""
    decision = run_gate(paths, cfg, evaluation)
    create_markdown_artifact(
        markdown=decision.report_markdown(), key="gate-report", description="Evaluation gate"
    )
    return decision


def main() -> None:
    """DVC stage entry point: ``python -m tasks.gate`` from the project root. Exits 0 on a failed gate
    too: the decision is this stage's output; acting on it (promotion) is the flow's step."""
    configure_environment()
    stage_logging()
    paths = ProjectPaths.at(".")
    try:
        decision = run_gate(paths, load_config(paths.params), read_evaluation(paths))
    except (ConfigError, FileNotFoundError) as err:
        print(f"gate: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"gate: {decision.summary()} (report: {paths.rel(paths.gate_report)})")


if __name__ == "__main__":
    main()
