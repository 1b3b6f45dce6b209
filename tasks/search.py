"""`train.strategy: auto`: choose how much of the pretrained model to adapt, within a time budget.

Successive halving over strategies and learning rates (``SEARCH_SPACE``), judged on the validation split
only (the test split is left to the gate). Every candidate trains briefly on a subset of the training
rows; the best third of each round trains again on more rows; the best of the last round is the chosen
configuration, which the train stage then trains like a fixed strategy (``train.epochs`` on every row).
A calibration trial (the costliest candidate for two steps) times this machine first. Each round then
gets an equal share of what is left of ``train.time_budget_s``, and its trials as many rows as that share
affords, estimated from the seconds the trials so far took (round 0: at most 32 steps). A trial the budget
cannot afford is not started, so the trials' seconds stay within the budget up to the error of one
estimate. Trials that fix the same lower layers (``head``, ``freeze``)
share those layers' outputs (train.FrozenActivations).

The schedule and the cost arithmetic are pure functions; ``run_search`` runs them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.prepare import subsample

if TYPE_CHECKING:
    import pandas as pd

    from tasks.config import TrainConfig
    from tasks.train import FrozenActivations

log = logging.getLogger("transferline.search")

# Each strategy with the settings of the strategy table (docs/results/strategies.md) and three learning
# rates around its usual one, in the order round 0 tries them: the costliest first, so the first trials'
# seconds over- rather than under-estimate the rest. `gradual` is left out: its unfreezing pace is set in
# steps or epochs, so a short trial does not show what it does in a full run.
SEARCH_SPACE: dict[str, tuple[dict[str, Any], tuple[float, ...]]] = {
    "full": ({"layer_lr_decay": 0.9}, (1.0e-4, 5.0e-5, 2.0e-4)),
    "lora": ({"lora_rank": 16, "lora_alpha": 32}, (1.0e-3, 5.0e-4, 2.0e-3)),
    "freeze": ({"freeze_layers": 4, "cache_frozen": True}, (1.0e-4, 5.0e-5, 2.0e-4)),
    "head": ({"cache_frozen": True}, (2.0e-3, 1.0e-3, 4.0e-3)),
}
ETA = 3  # each round keeps the best 1/ETA of the last one
LAST_ROUND = 2  # candidates of the last round: the choice is made between at least two
# Round 0 trains each candidate for up to this many steps (fewer when a third of the budget affords
# fewer at the calibration's pace, but not under the minimum): enough to leave the warm-up and tell a
# learning rate that works from one that does not.
FIRST_ROUND_STEPS = 32
MIN_FIRST_ROUND_STEPS = 8
CALIBRATION = -1  # the round number of the calibration trial: timed, never compared with round 0
CALIBRATION_STEPS = 2
RECORD_FILE = "search.json"  # in the run's checkpoint folder: a restarted run resumes, not re-searches


@dataclass(frozen=True)
class Candidate:
    strategy: str
    settings: dict[str, Any]  # train.* values on top of params.yaml, learning_rate among them

    def label(self) -> str:
        return f"{self.strategy} lr={self.settings['learning_rate']:g}"


@dataclass(frozen=True)
class Trial:
    round: int
    strategy: str
    settings: dict[str, Any]
    rows: int  # training rows
    epochs: int
    val_accuracy: float  # best epoch's, on the whole validation split
    seconds: float  # wall time of the trial: set-up, activation cache, steps, validation
    train_seconds: float  # of which optimisation steps
    cached_layers: int  # lowest layers trained from the activation cache

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.strategy, self.settings)


@dataclass(frozen=True)
class Cost:
    """Estimated seconds of one trial: a fixed part and a part per training row and epoch."""

    fixed_s: float
    per_row_s: float

    def of(self, rows: int) -> float:
        return self.fixed_s + self.per_row_s * rows


@dataclass(frozen=True)
class SearchResult:
    budget_s: float
    seconds: float  # wall time of the whole search
    trials: list[Trial]
    chosen: Candidate
    stopped: str  # why the search ended
    skipped: list[str] = field(default_factory=list)  # candidates the budget could not afford

    def best(self) -> Trial:
        """The chosen candidate's trial of the last round it ran in."""
        return max((t for t in self.trials if t.candidate == self.chosen), key=lambda t: t.round)

    def to_dict(self) -> dict[str, Any]:
        """What the lineage shows: `strategy_search` (the trials) and `chosen`."""
        best = self.best()
        return {
            "budget_s": self.budget_s,
            "seconds": round(self.seconds, 1),
            "stopped": self.stopped,
            "skipped": list(self.skipped),
            "strategy_search": [_rounded(asdict(t)) for t in self.trials],
            "chosen": {
                "strategy": self.chosen.strategy,
                "settings": dict(self.chosen.settings),
                "val_accuracy": round(best.val_accuracy, 4),
                "round": best.round,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchResult:
        chosen = data["chosen"]
        return cls(
            budget_s=data["budget_s"],
            seconds=data["seconds"],
            trials=[Trial(**t) for t in data["strategy_search"]],
            chosen=Candidate(chosen["strategy"], chosen["settings"]),
            stopped=data["stopped"],
            skipped=data["skipped"],
        )


def _rounded(trial: dict[str, Any]) -> dict[str, Any]:
    for key in ("val_accuracy", "seconds", "train_seconds"):
        trial[key] = round(trial[key], 4)
    return trial


# -- the schedule (pure) -------------------------------------------------------------------------------


def candidates(space: dict[str, tuple[dict[str, Any], tuple[float, ...]]] = SEARCH_SPACE) -> list[Candidate]:
    """Every strategy at its usual rate first, then the other rates: should the budget end round 0
    early, the strategies have still been compared with each other."""
    most = max(len(rates) for _, rates in space.values())
    return [
        Candidate(strategy, {**settings, "learning_rate": rates[i]})
        for i in range(most)
        for strategy, (settings, rates) in space.items()
        if i < len(rates)
    ]


def halving_rounds(n: int, eta: int = ETA, last: int = LAST_ROUND) -> list[int]:
    """Candidates per round: each keeps the best 1/eta of the one before, down to `last`.

    >>> halving_rounds(12)
    [12, 4, 2]
    """
    rounds = [n]
    while rounds[-1] > last:
        rounds.append(max(last, math.ceil(rounds[-1] / eta)))
    return rounds


def survivors(trials: Sequence[Trial], keep: int) -> list[Candidate]:
    """The `keep` best candidates of one round's trials: highest validation accuracy, then fewest seconds."""
    ranked = sorted(trials, key=lambda t: (-t.val_accuracy, t.seconds))
    return [t.candidate for t in ranked[:keep]]


def estimate_cost(trials: Sequence[Trial], strategy: str) -> Cost | None:
    """A trial's cost, from the strategy's latest trial: the machine's pace now, past the first trial's
    cold start. A strategy not tried yet gets the cheapest tried one's: candidates come costliest first,
    so it is cheaper than those (an over-estimate, never a guess from a cheaper one). None before any trial.
    """
    latest: dict[str, Cost] = {}
    for t in trials:
        fixed = max(t.seconds - t.train_seconds, 0.0)
        latest[t.strategy] = Cost(fixed_s=fixed, per_row_s=t.train_seconds / max(t.rows * t.epochs, 1))
    if strategy in latest:
        return latest[strategy]
    return min(latest.values(), key=lambda c: (c.per_row_s, c.fixed_s), default=None)


def affordable_rows(share_s: float, costs: Sequence[Cost], low: int, high: int) -> int | None:
    """The most training rows (at most `high`) that each of the trials can have so that their estimated
    seconds together stay within `share_s`; None when even `low` rows would not."""
    per_row = sum(c.per_row_s for c in costs)
    room = share_s - sum(c.fixed_s for c in costs)
    rows = high if per_row <= 0 else min(high, math.floor(room / per_row))
    return rows if rows >= low and room > 0 else None


def trial_shape(rows: int, available: int) -> tuple[int, int]:
    """(rows, epochs) of a trial asked for `rows` training examples when the split has `available`:
    more than the split means whole epochs over all of it."""
    if rows <= available:
        return rows, 1
    return available, rows // available


# -- running it ----------------------------------------------------------------------------------------


def run_search(
    base: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    record: Path | None = None,
) -> tuple[SearchResult, FrozenActivations | None]:
    """The search, or the one `record` holds from an earlier attempt of the same run (written there).

    Returns:
        (the result, the activation cache when the chosen candidate trains from one, else None).
    """
    from tasks.train import FrozenActivations

    if record is not None and record.is_file():
        found = SearchResult.from_dict(json.loads(record.read_text()))
        log.info("strategy search: reusing %s (%s)", record, found.chosen.label())
        return found, FrozenActivations() if found.best().cached_layers else None
    activations = FrozenActivations()
    found = _halve(base, train, validation, labels, cfg, activations)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(found.to_dict(), indent=2) + "\n")
    log.info(
        "strategy search: %s chosen after %d trials in %.0f s of %g s (%s); fixed-layer outputs "
        "computed for %d examples, reused for %d",
        found.chosen.label(), len(found.trials), found.seconds, cfg.time_budget_s, found.stopped,
        activations.computed, activations.reused,
    )  # fmt: skip
    return found, activations if found.best().cached_layers else None


def chosen_config(cfg: TrainConfig, found: SearchResult) -> TrainConfig:
    """The train settings the chosen candidate trains with: params.yaml's, with its strategy and settings."""
    return cfg.model_copy(update={"strategy": found.chosen.strategy, **found.chosen.settings})


@dataclass
class _Search:
    """One search as it runs: what every trial reads, and the trials so far."""

    base: Path
    train: pd.DataFrame
    validation: pd.DataFrame
    labels: list[str]
    cfg: TrainConfig
    activations: FrozenActivations
    started: float = field(default_factory=time.perf_counter)
    trials: list[Trial] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def spent(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.cfg.time_budget_s - self.spent()

    def run_round(self, number: int, pool: list[Candidate], rows: int) -> None:
        """Each candidate of `pool` on `rows` rows, unless the budget left cannot afford it."""
        for candidate in pool:
            cost = estimate_cost(self.trials, candidate.strategy)
            if cost is not None and cost.of(rows) > self.left():
                self.skipped.append(f"round {number}: {candidate.label()}")
                continue
            trial = _trial(self, candidate, number, rows)
            self.trials.append(trial)
            log.info(
                "trial %d, round %d: %s on %d rows: validation accuracy %.4f in %.0f s (%.0f of %g s spent)",
                len(self.trials), number, candidate.label(), trial.rows * trial.epochs, trial.val_accuracy,
                trial.seconds, self.spent(), self.cfg.time_budget_s,
            )  # fmt: skip


def _halve(
    base: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    activations: FrozenActivations,
) -> SearchResult:
    """Successive halving within cfg.time_budget_s (see the module docstring)."""
    state = _Search(base, train, validation, labels, cfg, activations)
    pool = candidates()
    rounds = halving_rounds(len(pool))
    # Calibration: the costliest strategy for a few steps, so round 0 is sized by this machine's pace.
    # It always runs (nothing to estimate it from), so there is always a trial to choose from.
    state.run_round(CALIBRATION, pool[:1], min(len(train), CALIBRATION_STEPS * cfg.batch_size))
    most = len(train) * cfg.epochs  # no trial trains longer than the chosen configuration will
    high = min(most, FIRST_ROUND_STEPS * cfg.batch_size)
    low = min(high, MIN_FIRST_ROUND_STEPS * cfg.batch_size)
    # Round 0 at the calibration's pace for every candidate: an over-estimate for all but the costliest,
    # which leaves more of the budget to the later rounds.
    dearest = estimate_cost(state.trials, pool[0].strategy) or Cost(0, 0)
    rows = affordable_rows(state.left() / len(rounds), [dearest] * len(pool), low, high) or low
    stopped = "schedule complete"
    for number, keep in enumerate(rounds):
        if number:
            pool = survivors([t for t in state.trials if t.round == number - 1], keep)
            costs = [estimate_cost(state.trials, c.strategy) or dearest for c in pool]  # all measured
            share = state.left() / (len(rounds) - number)
            grown = affordable_rows(share, costs, rows + 1, most) if rows < most else None
            if grown is None:
                stopped = (
                    f"round {number - 1} already trained on every row for train.epochs"
                    if rows >= most
                    else f"the budget left did not afford round {number} more rows than round {number - 1}"
                )
                break
            rows = grown
        state.run_round(number, pool, rows)
        if not any(t.round == number for t in state.trials):
            stopped = f"the budget afforded no trial of round {number}"
            break
    last = max(t.round for t in state.trials)
    chosen = survivors([t for t in state.trials if t.round == last], 1)[0]
    return SearchResult(cfg.time_budget_s, state.spent(), state.trials, chosen, stopped, state.skipped)


def _trial(search: _Search, candidate: Candidate, number: int, rows: int) -> Trial:
    """One candidate trained on `rows` training examples (a stratified subset, the same rows for every
    candidate of a round and nested across rounds), scored on the whole validation split."""
    from tasks.train import fine_tune

    cfg = search.cfg
    rows, epochs = trial_shape(rows, len(search.train))
    subset = subsample(search.train, rows, cfg.seed)
    settings = {**candidate.settings, "strategy": candidate.strategy, "epochs": epochs}
    trial_cfg = cfg.model_copy(update={**settings, "checkpoint_every_steps": 0, "early_stopping_patience": 0})
    started = time.perf_counter()
    _, _, result = fine_tune(
        search.base, subset, search.validation, search.labels, trial_cfg, progress=False,
        activations=search.activations,
    )  # fmt: skip
    return Trial(
        round=number,
        strategy=candidate.strategy,
        settings=dict(candidate.settings),
        rows=len(subset),
        epochs=epochs,
        val_accuracy=result.best_val_accuracy,
        seconds=time.perf_counter() - started,
        train_seconds=sum(h.seconds for h in result.history),
        cached_layers=result.cached_layers,
    )
