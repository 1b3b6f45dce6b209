"""The strategy search of `train.strategy: auto` (tasks/search.py): its schedule and cost arithmetic as pure
functions. The search itself, training the real MiniLM, is tests/training/test_search.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tasks.config import STRATEGIES, load_config
from tasks.search import (
    SEARCH_SPACE,
    Candidate,
    Cost,
    SearchResult,
    Trial,
    affordable_rows,
    candidates,
    chosen_config,
    estimate_cost,
    first_round,
    halving_rounds,
    survivors,
    trial_shape,
)
from tests.minilm import PARAMS


def trial(strategy: str, acc: float, seconds: float, train_seconds: float, rows: int = 100, **kw) -> Trial:
    settings = {"learning_rate": kw.pop("lr", 1e-4)}
    return Trial(
        kw.pop("round", 0), strategy, settings, rows, kw.pop("epochs", 1), acc, seconds, train_seconds, 0,
        val_loss=kw.pop("loss", 0.5),
    )  # fmt: skip


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


def test_equal_accuracies_are_ranked_by_validation_loss_before_seconds():
    # Short trials that all still predict the majority class: the one whose loss fell most learned most.
    trials = [
        trial("head", 0.5775, 7, 5, loss=0.68),
        trial("freeze", 0.5775, 8, 6, loss=0.67),
        trial("full", 0.5775, 16, 12, loss=0.61),
        trial("lora", 0.5775, 13, 10, loss=math.nan),  # no recorded loss: after every measured one
    ]
    assert [c.strategy for c in survivors(trials, 4)] == ["full", "freeze", "head", "lora"]


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


def test_fixed_layer_outputs_are_costed_per_row_at_the_pace_they_were_computed():
    first = replace(trial("head", 0.7, 12.0, 1.0, rows=100), cache_seconds=10.0, cache_examples=200)
    again = replace(trial("head", 0.7, 2.0, 1.0, rows=100), cache_seconds=0.0, cache_examples=0)
    # 1 s fixed; 0.01 s per row of training and 0.05 s per row through the fixed layers
    for trials in ([first], [first, again]):  # the pace is kept when a later trial computed nothing
        cost = estimate_cost(trials, "head")
        assert (cost.fixed_s, cost.per_row_s) == pytest.approx((1.0, 0.06))


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


@pytest.mark.parametrize(
    ("left", "shape"),
    [
        (3000.0, (512, 12)),  # a third each for 12 x (2 s + 512 rows x 0.1 s): the most round 0 trains
        (1200.0, (313, 12)),  # (400 - 12 x 2) / (12 x 0.1) rows for each of the 12 candidates
        (600.0, (512, 4)),  # not 256 rows for 12: one per strategy, half the budget each round
        (200.0, (230, 4)),  # (100 - 4 x 2) / (4 x 0.1) rows for one trial per strategy
        (40.0, (64, 4)),  # not even the floor: the floor (what the budget cannot afford is not started)
    ],
)
def test_a_short_budget_drops_learning_rates_then_steps_but_keeps_every_strategy(left, shape):
    assert first_round(left, Cost(2.0, 0.1), pool=12, strategies=4, rows=(64, 256, 512)) == shape


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


def test_auto_is_refused_with_settings_that_most_of_its_candidates_cannot_train():
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match="adversarial_eps shifts the word embeddings"):
        load_config(PARAMS, {"train.strategy": "auto", "train.adversarial_eps": 0.1})
    assert load_config(PARAMS, {"train.strategy": "auto"}).train.time_budget_s > 0


def test_validation_loss_is_per_example_for_classes_and_per_labelled_token_for_tags():
    import torch

    from tasks.kinds.base import IGNORE_INDEX
    from tasks.train import validation_loss

    sure, unsure = torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.zeros(2, 2)
    assert validation_loss(unsure, torch.tensor([0, 1])) == pytest.approx(math.log(2))
    assert validation_loss(sure, torch.tensor([0, 1])) < validation_loss(unsure, torch.tensor([0, 1]))
    # A tagger: (sentences, tokens, tags) logits; the targets are padded past the batch's longest sentence
    # and its ignored positions (here a confidently wrong one) do not count.
    logits = torch.tensor([[[4.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])
    targets = torch.tensor([[0, IGNORE_INDEX, 1, IGNORE_INDEX]])
    wrong_where_ignored = torch.tensor([[[4.0, 0.0], [0.0, 9.0], [0.0, 4.0]]])
    assert validation_loss(logits, targets) == pytest.approx(validation_loss(wrong_where_ignored, targets))
    assert validation_loss(logits, targets) == pytest.approx(validation_loss(sure, torch.tensor([0, 1])))
