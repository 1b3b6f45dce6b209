"""decide(): the floor, the improvement rule, NaN, and the first-model rule, table-driven."""

import math
from dataclasses import dataclass

import pytest

from tasks.config import GateConfig
from tasks.evaluate import compute_metrics
from tasks.gate import decide, rejection_message


@dataclass(frozen=True)
class M:
    accuracy: float


POLICY = GateConfig(min_accuracy=0.80, min_improvement=0.01)


@pytest.mark.parametrize(
    ("challenger", "champion", "passed", "failed_checks"),
    [
        (0.85, None, True, []),  # first model: floor only
        (0.79, None, False, ["accuracy floor"]),
        (0.90, 0.85, True, []),
        (0.855, 0.85, False, ["improvement over champion"]),  # gain below min_improvement
        (0.86, 0.85, True, []),  # exactly the required gain
        (0.78, 0.70, False, ["accuracy floor"]),  # better than champion, still under the floor
        (math.nan, None, False, ["metric present"]),
        (math.nan, 0.85, False, ["metric present"]),
        (0.90, math.nan, False, ["improvement"]),  # champion metric unusable: never promote blindly
    ],
)
def test_decide(challenger, champion, passed, failed_checks):
    d = decide(M(challenger), None if champion is None else M(champion), POLICY, "1" if champion else None)
    assert d.passed is passed
    assert [c.name for c in d.failed] == failed_checks
    report = d.report_markdown()
    assert ("PASSED" in report) is passed and "| check | value | threshold | verdict |" in report


def test_first_model_rule_is_explicit():
    d = decide(M(0.9), None, POLICY)
    assert any(c.name == "first model" and c.passed for c in d.checks)
    assert "first-model rule" in d.report_markdown()


def test_rejection_message_says_what_stays():
    d = decide(M(0.84), M(0.85), POLICY, "3")
    msg = rejection_message(d, "4")
    assert "Version 4 stays registered as 'challenger'" in msg and "'champion' stays on v3" in msg
    assert "gate.min_improvement" in msg


def test_compute_metrics():
    r = compute_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"], "x")
    assert r.accuracy == 0.75 and r.confusion == [[1, 1], [0, 2]]
    assert r.per_class["a"].precision == 1.0 and r.per_class["a"].recall == 0.5
    assert r.per_class["b"].precision == pytest.approx(2 / 3)
    assert r.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    assert r.metrics()["test_recall_a"] == 0.5
    unknown = compute_metrics(["a", "b"], ["zzz", "b"], ["a", "b"], "x")
    assert unknown.accuracy == 0.5 and unknown.confusion == [[0, 0], [0, 1]]
