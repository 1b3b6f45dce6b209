"""decide(): the gate policy, table-driven, on real EvalResults built from constructed predictions.

Each case builds 2,000 test rows (1,000 per class). Per class k the champion errs on ``wrong[k]`` rows;
the challenger fixes ``b[k]`` of them and breaks ``c[k]`` rows the champion got right, so McNemar's
b = sum(b), c = sum(c) and the accuracy gain is (b - c) / 2000, known exactly.
"""

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tasks.config import GateConfig
from tasks.evaluate import Budgets, EvalResult, Retention, compute_metrics
from tasks.gate import FIRST_MODEL, Decision, decide, rejection_message
from tasks.stats import mcnemar, paired_bootstrap_ci

LABELS = ["rotten", "fresh"]
PER_CLASS = 1000
POLICY = GateConfig(
    min_accuracy=0.80,
    mode="superiority",
    min_improvement=0.0,
    margin=0.01,
    alpha=0.05,
    bootstrap_samples=1000,
    seed=42,
    max_class_drop=0.05,
    max_forgetting=0.02,
    max_latency_ms=50.0,
    max_weights_mb=250.0,
)
WITHIN_BUDGET = Budgets(latency_p95_ms=12.5, weights_mb=87.0)


def pair(
    b: tuple[int, int] = (0, 0), c: tuple[int, int] = (0, 0), wrong: tuple[int, int] = (150, 150)
) -> tuple[EvalResult, EvalResult]:
    """(challenger, champion) scored on the same rows, with the discordant counts b and c per class."""
    truth: list[str] = []
    champion: list[str] = []
    challenger: list[str] = []
    for k, label in enumerate(LABELS):
        other = LABELS[1 - k]
        assert b[k] <= wrong[k] and wrong[k] + c[k] <= PER_CLASS
        for i in range(PER_CLASS):
            champion_wrong = i < wrong[k]
            challenger_wrong = b[k] <= i < wrong[k] + c[k]
            truth.append(label)
            champion.append(other if champion_wrong else label)
            challenger.append(other if challenger_wrong else label)
    return (
        compute_metrics(truth, challenger, LABELS, "challenger"),
        compute_metrics(truth, champion, LABELS, "champion v3"),
    )


def retention_set(forgetting: float, n: int = 1000) -> Retention:
    """The champion gets 95% of n retention rows right, the challenger `forgetting` less."""
    truth = [LABELS[i % 2] for i in range(n)]
    flip = {"rotten": "fresh", "fresh": "rotten"}

    def scored(correct: int, name: str) -> EvalResult:
        pred = [t if i < correct else flip[t] for i, t in enumerate(truth)]
        return compute_metrics(truth, pred, LABELS, name)

    champion_right = round(0.95 * n)
    return Retention(
        challenger=scored(champion_right - round(forgetting * n), "challenger"),
        champion=scored(champion_right, "champion v3"),
    )


# Edits applied to the constructed pair: the ways an evaluation can be broken.
def nan_challenger(ch, cp):
    return dataclasses.replace(ch, accuracy=math.nan), cp


def none_challenger(ch, cp):
    return dataclasses.replace(ch, accuracy=None), cp


def empty_challenger(ch, cp):
    return compute_metrics([], [], LABELS, "challenger"), cp  # no test rows: accuracy is NaN


def nan_champion(ch, cp):
    return ch, dataclasses.replace(cp, accuracy=math.nan)


def champion_on_fewer_rows(ch, cp):
    return ch, compute_metrics(cp.truth[:-1], cp.predictions[:-1], LABELS, cp.name)


def champion_on_other_rows(ch, cp):
    truth = cp.truth[PER_CLASS:] + cp.truth[:PER_CLASS]  # same length, same class counts, other rows
    return ch, compute_metrics(truth, cp.predictions, LABELS, cp.name)


@dataclass(frozen=True)
class Case:
    b: tuple[int, int] = (0, 0)
    c: tuple[int, int] = (0, 0)
    wrong: tuple[int, int] = (150, 150)
    champion: bool = True
    policy: dict = field(default_factory=dict)
    forgetting: float | None = 0.0  # None: no retention set
    budgets: Budgets | None = WITHIN_BUDGET
    edit: Callable | None = None

    def run(self) -> Decision:
        challenger, champion = pair(self.b, self.c, self.wrong)
        if self.edit is not None:
            challenger, champion = self.edit(challenger, champion)
        return decide(
            challenger,
            champion if self.champion else None,
            POLICY.model_copy(update=self.policy),
            champion_version="3" if self.champion else None,
            retention=None if self.forgetting is None else retention_set(self.forgetting),
            budgets=self.budgets,
        )


SIGNIFICANT = {"b": (40, 40), "c": (10, 10)}  # gain +0.030, b=80 c=20, McNemar p ~ 1e-9
NI = {"mode": "non_inferiority"}

CASES = [
    # superiority: significance, not just a higher number
    pytest.param(Case(**SIGNIFICANT), [], id="significant-improvement-promotes"),
    pytest.param(Case(**SIGNIFICANT, policy={"min_improvement": 0.01}), [], id="ci-above-min-improvement"),
    pytest.param(
        Case(**SIGNIFICANT, policy={"min_improvement": 0.03}),
        ["improvement over champion"],
        id="ci-below-min-improvement",
    ),
    pytest.param(
        Case(b=(12, 12), c=(10, 10)),
        ["improvement over champion", "McNemar"],
        id="tiny-non-significant-gain-blocks",
    ),
    pytest.param(Case(), ["improvement over champion", "McNemar"], id="identical-models-block"),
    pytest.param(
        Case(b=(10, 10), c=(40, 40)),
        ["improvement over champion", "McNemar"],
        id="significantly-worse-blocks",
    ),
    pytest.param(
        Case(b=(100, 100), c=(0, 0), wrong=(400, 400)), ["accuracy floor"], id="better-but-under-floor"
    ),
    # class recall and forgetting
    pytest.param(
        Case(b=(0, 150), c=(60, 0)), ["class recall"], id="class-recall-drop-blocks-better-accuracy"
    ),
    pytest.param(Case(b=(0, 150), c=(50, 0)), [], id="class-recall-drop-at-limit-passes"),
    pytest.param(Case(**SIGNIFICANT, forgetting=0.03), ["retention"], id="forgetting-blocks"),
    pytest.param(Case(**SIGNIFICANT, forgetting=0.01), [], id="forgetting-within-tolerance"),
    pytest.param(Case(**SIGNIFICANT, forgetting=None), [], id="no-retention-set-is-informational"),
    # unusable metrics: never promote blindly
    pytest.param(Case(**SIGNIFICANT, edit=nan_challenger), ["metric present"], id="challenger-nan"),
    pytest.param(Case(**SIGNIFICANT, edit=none_challenger), ["metric present"], id="challenger-none"),
    pytest.param(
        Case(champion=False, edit=empty_challenger), ["metric present"], id="challenger-no-rows-first-model"
    ),
    pytest.param(Case(**SIGNIFICANT, edit=nan_champion), ["champion metric"], id="champion-nan"),
    pytest.param(Case(**SIGNIFICANT, edit=champion_on_fewer_rows), ["same rows"], id="rows-count-mismatch"),
    pytest.param(Case(**SIGNIFICANT, edit=champion_on_other_rows), ["same rows"], id="rows-labels-mismatch"),
    # first-model rule: floor and budgets only
    pytest.param(Case(champion=False), [], id="first-model-passes"),
    pytest.param(Case(champion=False, wrong=(250, 250)), ["accuracy floor"], id="first-model-under-floor"),
    pytest.param(
        Case(champion=False, budgets=Budgets(80.0, 87.0)), ["latency budget"], id="first-model-over-latency"
    ),
    pytest.param(Case(champion=False, budgets=None), ["budgets"], id="first-model-budgets-missing"),
    # budgets, with a champion
    pytest.param(Case(**SIGNIFICANT, budgets=Budgets(50.1, 87.0)), ["latency budget"], id="latency-over"),
    pytest.param(Case(**SIGNIFICANT, budgets=Budgets(50.0, 250.0)), [], id="budgets-at-limit-pass"),
    pytest.param(Case(**SIGNIFICANT, budgets=Budgets(12.5, 400.0)), ["weights budget"], id="weights-over"),
    pytest.param(Case(**SIGNIFICANT, budgets=None), ["budgets"], id="budgets-missing"),
    pytest.param(
        Case(**SIGNIFICANT, budgets=Budgets(math.nan, 87.0)), ["latency budget"], id="latency-not-measured"
    ),
    # non-inferiority: may not be worse than the margin
    pytest.param(Case(b=(5, 5), c=(7, 7), policy=NI), [], id="ni-slightly-worse-within-margin"),
    pytest.param(Case(b=(5, 5), c=(25, 25), policy=NI), ["non-inferiority"], id="ni-worse-beyond-margin"),
    pytest.param(
        Case(b=(60, 60), c=(66, 66), policy=NI), ["non-inferiority"], id="ni-estimate-within-margin-ci-not"
    ),
    pytest.param(Case(policy=NI), [], id="ni-identical-passes"),
    pytest.param(Case(**SIGNIFICANT, policy=NI), [], id="ni-better-passes"),
    pytest.param(Case(b=(0, 150), c=(60, 0), policy=NI), ["class recall"], id="ni-class-recall-drop-blocks"),
    pytest.param(Case(b=(5, 5), c=(7, 7), policy=NI, forgetting=0.05), ["retention"], id="ni-forgetting"),
]


@pytest.mark.parametrize(("case", "failed_checks"), CASES)
def test_decide(case: Case, failed_checks: list[str]):
    d = case.run()
    assert [c.name for c in d.failed] == failed_checks
    assert d.passed is (not failed_checks)
    report = d.report_markdown()
    assert (
        "**PASSED**" in report
    ) is d.passed and "| check | value | threshold | verdict | detail |" in report
    for check in d.checks:  # every check is a row with its verdict
        assert f"| {check.name} |" in report and check.detail in report
    assert (FIRST_MODEL in report) is (not case.champion)
    json.dumps(d.to_dict(), allow_nan=False)  # loggable as-is
    if not d.passed:
        assert d.summary().startswith("gate failed: ")


def test_case_count():
    """The table covers the cases the gate is specified by (reported in the change description)."""
    assert len(CASES) == 34


def test_first_model_rule_is_explicit():
    d = Case(champion=False).run()
    assert d.passed and d.first_model and d.interval is None and d.mcnemar is None
    assert [c.name for c in d.checks] == [
        "metric present",
        "accuracy floor",
        "latency budget",
        "weights budget",
        "first model",
    ]
    report = d.report_markdown()
    assert "first-model rule" in report and "no champion yet — floor and budgets only" in report
    assert "McNemar" not in report and "CI" not in report
    assert "first model" in d.summary()


def test_report_shows_interval_and_mcnemar():
    d = Case(**SIGNIFICANT).run()
    assert d.interval is not None and d.mcnemar is not None
    assert (d.mcnemar.b, d.mcnemar.c) == (80, 20) and d.mcnemar.p_value < 1e-8
    assert d.interval.estimate == pytest.approx(0.03) and 0.015 < d.interval.low < 0.03 < d.interval.high
    ci_check = next(c for c in d.checks if c.name == "improvement over champion")
    assert ci_check.interval == (d.interval.low, d.interval.high) and ci_check.value == d.interval.low
    assert f"gain +0.0300 [95% CI {d.interval.low:+.4f}, {d.interval.high:+.4f}]" in ci_check.detail
    assert "McNemar p=" in next(c for c in d.checks if c.name == "McNemar").detail
    report = d.report_markdown()
    assert "champion v3" in report and "Mode: `superiority`" in report
    assert "paired bootstrap, 1000 resamples" in report and "b=80 rows only the challenger" in report
    assert "gain +0.0300" in d.summary()


def test_decision_uses_the_paired_statistics_on_the_shared_rows():
    challenger, champion = pair(**SIGNIFICANT)
    d = decide(challenger, champion, POLICY, champion_version="3", budgets=WITHIN_BUDGET)
    a, z = challenger.correct(), champion.correct()
    assert d.mcnemar == mcnemar(a, z)
    assert d.interval == paired_bootstrap_ci(a, z, samples=1000, alpha=0.05, seed=42)
    assert (
        d.to_dict()
        == decide(challenger, champion, POLICY, champion_version="3", budgets=WITHIN_BUDGET).to_dict()
    )


def test_class_recall_names_the_worst_class():
    d = Case(b=(0, 150), c=(60, 0)).run()
    (check,) = d.failed
    assert "worst class 'rotten'" in check.detail and "0.8500 -> 0.7900" in check.detail
    assert check.value == pytest.approx(0.06) and check.threshold == 0.05


def test_non_inferiority_reports_mcnemar_for_information_only():
    d = Case(b=(5, 5), c=(7, 7), policy=NI).run()
    mc = next(c for c in d.checks if c.name == "McNemar")
    assert mc.passed and mc.threshold is None and "for information" in mc.detail
    ni = next(c for c in d.checks if c.name == "non-inferiority")
    assert ni.threshold == -0.01 and ni.value > -0.01 and d.interval.estimate == pytest.approx(-0.002)


def test_no_retention_set_says_so():
    d = Case(**SIGNIFICANT, forgetting=None).run()
    check = next(c for c in d.checks if c.name == "retention")
    assert check.passed and check.value is None and "no retention set available" in check.detail


def test_to_dict_is_json_with_nulls_for_missing_numbers():
    d = Case(**SIGNIFICANT, edit=nan_challenger).run()
    data = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert data["passed"] is False and data["failed"] == ["metric present"]
    assert data["challenger_accuracy"] is None and data["policy"]["mode"] == "superiority"
    assert data["checks"][0]["name"] == "metric present"


def test_rejection_message_says_what_stays_and_what_to_relax():
    d = Case(b=(12, 12), c=(10, 10)).run()
    msg = rejection_message(d, "4")
    assert "Version 4 stays registered as 'challenger'" in msg and "'champion' stays on v3" in msg
    assert "gate.min_improvement" in msg and "gate.alpha" in msg
    first = rejection_message(Case(champion=False, wrong=(250, 250)).run(), "1")
    assert "there is still no 'champion'" in first and "gate.min_accuracy" in first


def test_compute_metrics():
    r = compute_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"], "x")
    assert r.accuracy == 0.75 and r.confusion == [[1, 1], [0, 2]]
    assert r.per_class["a"].precision == 1.0 and r.per_class["a"].recall == 0.5
    assert r.per_class["b"].precision == pytest.approx(2 / 3)
    assert r.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    assert r.metrics()["test_recall_a"] == 0.5
    assert r.correct() == [True, False, True, True]
    unknown = compute_metrics(["a", "b"], ["zzz", "b"], ["a", "b"], "x")
    assert unknown.accuracy == 0.5 and unknown.confusion == [[0, 0], [0, 1]]
