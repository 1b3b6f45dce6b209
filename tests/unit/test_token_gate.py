"""Token classification through evaluate's result and the gate: micro entity F1 as the headline, the paired
bootstrap over sentences instead of McNemar, per-type F1 drops, retention on F1; classification results keep
their report fields."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tasks.config import GateConfig
from tasks.evaluate import Budgets, EvalResult, Evaluation, Retention, _eval_result, compute_metrics
from tasks.gate import decide
from tasks.kinds.token_evaluate import entity_result
from tasks.kinds.token_metrics import paired_bootstrap_f1

TYPES = ["person", "geo-loc"]
POLICY = GateConfig(
    min_accuracy=0.5,
    mode="superiority",
    min_improvement=0.0,
    margin=0.05,
    alpha=0.05,
    bootstrap_samples=500,
    seed=7,
    max_class_drop=0.10,
    max_forgetting=0.02,
    max_latency_ms=50.0,
    max_weights_mb=250.0,
)
BUDGETS = Budgets(latency_p95_ms=5.0, weights_mb=90.0)
SENTENCE = ["B-person", "I-person", "O", "B-geo-loc", "O"]
MISSED_PLACE = ["B-person", "I-person", "O", "O", "O"]
MISSED_PERSON = ["O", "O", "O", "B-geo-loc", "O"]


def tagged(n: int, wrong: int, miss: list[str] = MISSED_PLACE, name: str = "model") -> EvalResult:
    """n sentences of one person and one place; the first `wrong` predicted as `miss`."""
    truth = [list(SENTENCE) for _ in range(n)]
    predicted = [list(miss) if i < wrong else list(SENTENCE) for i in range(n)]
    return entity_result(truth, predicted, TYPES, name)


def test_an_entity_result_carries_micro_f1_per_type_scores_and_sentence_counts():
    result = tagged(10, 4)
    assert result.metric == "f1" and result.n == 10
    assert result.f1 == pytest.approx(2 * 16 / (2 * 16 + 0 + 4))  # 16 found, 4 places missed
    assert result.headline == result.f1
    assert result.per_class["person"].f1 == 1.0 and result.per_class["geo-loc"].recall == pytest.approx(0.6)
    assert result.counts[0] == [1, 0, 1] and result.counts[9] == [2, 0, 0]
    assert result.accuracy == pytest.approx(1 - 4 / 50)  # words tagged right
    metrics = result.metrics()
    assert metrics["test_f1"] == pytest.approx(result.f1)
    assert metrics["test_recall"] == pytest.approx(16 / 20) and metrics["test_precision"] == 1.0
    assert metrics["test_f1_geo-loc"] == pytest.approx(result.per_class["geo-loc"].f1)
    assert {"metric", "f1"} <= set(result.summary()) and "counts" not in result.summary()


def test_a_classification_result_keeps_its_report_fields():
    result = compute_metrics(["a", "b", "a"], ["a", "b", "b"], ["a", "b"], "challenger")
    assert result.metric == "accuracy" and result.headline == result.accuracy
    assert set(result.summary()) == {"name", "labels", "n", "accuracy", "macro_f1", "per_class", "confusion"}
    assert "test_f1" not in result.metrics()


def test_an_entity_result_survives_the_evaluation_file():
    result = tagged(6, 2)
    stored = json.loads(json.dumps(dataclasses.asdict(Evaluation(result, None, None, BUDGETS))))
    assert _eval_result(stored["challenger"]) == result


def test_the_first_entity_model_is_judged_on_its_f1_floor():
    passed = decide(tagged(20, 2), None, POLICY, budgets=BUDGETS)
    assert passed.passed and passed.metric == "f1"
    assert "entity F1" in passed.summary()
    low = decide(
        tagged(20, 20, MISSED_PERSON), None, POLICY.model_copy(update={"min_accuracy": 0.9}), budgets=BUDGETS
    )
    floor = next(c for c in low.checks if c.name == "entity F1 floor")
    assert not floor.passed and floor.value == pytest.approx(2 / 3)


def test_a_better_challenger_passes_on_the_paired_f1_bootstrap_without_mcnemar():
    challenger, champion = tagged(60, 5, name="challenger"), tagged(60, 40, name="champion v1")
    decision = decide(challenger, champion, POLICY, champion_version="1", budgets=BUDGETS)
    assert decision.passed, decision.summary()
    assert decision.mcnemar is None and not any(c.name == "McNemar" for c in decision.checks)
    expected = paired_bootstrap_f1(
        np.asarray(challenger.counts), np.asarray(champion.counts), samples=500, alpha=0.05, seed=7
    )
    assert decision.interval == expected and expected.low > 0
    assert decision.challenger_accuracy == challenger.f1 and decision.champion_accuracy == champion.f1
    assert "Entity F1 gain" in decision.report_markdown()


def test_equal_models_do_not_pass_superiority_but_pass_non_inferiority():
    a, b = tagged(40, 10, name="challenger"), tagged(40, 10, name="champion v1")
    assert not decide(a, b, POLICY, champion_version="1", budgets=BUDGETS).passed
    relaxed = POLICY.model_copy(update={"mode": "non_inferiority"})
    assert decide(a, b, relaxed, champion_version="1", budgets=BUDGETS).passed


def test_a_type_losing_more_f1_than_allowed_fails_the_gate():
    """The challenger finds every place but misses people the champion found: better micro F1 is not
    enough when one type drops more than gate.max_class_drop."""
    champion = tagged(60, 30, MISSED_PLACE, name="champion v1")
    challenger = tagged(60, 12, MISSED_PERSON, name="challenger")
    decision = decide(challenger, champion, POLICY, champion_version="1", budgets=BUDGETS)
    check = next(c for c in decision.checks if c.name == "type F1")
    assert not check.passed and "worst type 'person'" in check.detail
    assert check.value == pytest.approx(1.0 - challenger.per_class["person"].f1)


def test_retention_reads_entity_f1():
    champion = tagged(60, 40, name="champion v1")
    challenger = tagged(60, 5, name="challenger")
    kept = Retention(challenger=tagged(30, 10, name="c"), champion=tagged(30, 0, name="k"))
    decision = decide(challenger, champion, POLICY, champion_version="1", retention=kept, budgets=BUDGETS)
    check = next(c for c in decision.checks if c.name == "retention")
    assert not check.passed and "retention entity F1" in check.detail
    assert check.value == pytest.approx(kept.champion.f1 - kept.challenger.f1)


def test_a_champion_judged_on_another_metric_is_not_compared():
    champion = compute_metrics(["a", "b"] * 10, ["a", "b"] * 10, ["a", "b"], "champion v1")
    decision = decide(tagged(20, 0), champion, POLICY, champion_version="1", budgets=BUDGETS)
    check = next(c for c in decision.checks if c.name == "same rows")
    assert not decision.passed and not check.passed
    assert "scored on entity F1, the champion on accuracy" in check.detail
