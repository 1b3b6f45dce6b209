"""`train.strategy: auto`: choose how much of the pretrained model to adapt, within a time budget.

Successive halving over strategies and learning rates (``SEARCH_SPACE``), judged on the validation split
only (the test split is left to the gate). Every candidate trains briefly on a subset of the training
rows; the best third of each round trains again on more rows; the best of the last round is the chosen
configuration, which the train stage then trains like a fixed strategy (``train.epochs`` on every row),
unless its last trial already did exactly that: then that trial's model is kept (``Trained``).
After the model's code and weights are loaded once (so that no trial pays the process's cold start), a
calibration trial (the costliest candidate for two steps) times this machine. Each round then gets an
equal share of what is left of ``train.time_budget_s``, and its trials as many rows as that share affords,
estimated from the seconds the trials so far took (round 0: at most 32 steps; a budget too short for
every candidate drops learning rates before steps). A trial the budget cannot afford is not started, so
the trials' seconds stay within the budget up to the error of one estimate. Trials that fix the same
lower layers (``head``, ``freeze``) share those layers' outputs (train.FrozenActivations).

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

if TYPE_CHECKING:
    import pandas as pd

    from tasks.config import TrainConfig
    from tasks.kinds.base import TaskKind
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
# Image models (tasks/kinds/image.py): the same strategies around the rates the image example's table
# chose on validation (docs/images.md: head 3e-3, freeze 1e-3 with the stem and 5 of the 8 layers fixed);
# a convolutional network fine-tunes at rates ten times a transformer's.
IMAGE_SEARCH_SPACE: dict[str, tuple[dict[str, Any], tuple[float, ...]]] = {
    "full": ({"layer_lr_decay": 0.9}, (1.0e-3, 5.0e-4, 2.0e-3)),
    "lora": ({"lora_rank": 16, "lora_alpha": 32}, (2.0e-3, 1.0e-3, 4.0e-3)),
    "freeze": ({"freeze_layers": 5, "cache_frozen": True}, (1.0e-3, 5.0e-4, 2.0e-3)),
    "head": ({"cache_frozen": True}, (3.0e-3, 1.0e-3, 1.0e-2)),
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
    cache_seconds: float = 0.0  # of which running examples not cached yet through those layers
    cache_examples: int = 0  # how many (training and validation) examples that was
    val_loss: float = math.nan  # the best epoch's validation cross-entropy: breaks ties of accuracy

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
class Trained:
    """What a trial of the whole configuration (every training row, ``train.epochs`` epochs) trained:
    the train stage's next step for the chosen candidate, already done."""

    trial: int  # its number among the search's trials (1-based, as logged)
    model: Any
    processor: Any
    result: Any  # train.TrainResult


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
    for key in ("val_accuracy", "val_loss", "seconds", "train_seconds", "cache_seconds"):
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
    """The `keep` best candidates of one round's trials: highest validation accuracy, then lowest validation
    loss, then fewest seconds. Short first-round trials often all still predict the majority class; their
    losses show which learned most (ranking those by seconds alone would favour the cheapest strategy)."""
    ranked = sorted(trials, key=lambda t: (-t.val_accuracy, _loss(t), t.seconds))
    return [t.candidate for t in ranked[:keep]]


def _loss(trial: Trial) -> float:
    return math.inf if math.isnan(trial.val_loss) else trial.val_loss


def estimate_cost(trials: Sequence[Trial], strategy: str) -> Cost | None:
    """A trial's cost, from the strategy's latest trial: the machine's pace now, past the first trial's
    cold start. Its fixed layers' outputs are counted for every row, at the pace the strategy's trials
    computed them (an over-estimate where earlier trials computed some): a trial on many new rows spends
    most of its time there. A strategy not tried yet gets the cheapest tried one's: candidates come
    costliest first, so it is cheaper than those (an over-estimate, never a guess from a cheaper one).
    None before any trial.
    """
    latest: dict[str, Cost] = {}
    cache_pace: dict[str, float] = {}  # seconds per example run through the fixed layers
    for t in trials:
        if t.cache_examples:
            cache_pace[t.strategy] = t.cache_seconds / t.cache_examples
        fixed = max(t.seconds - t.train_seconds - t.cache_seconds, 0.0)
        latest[t.strategy] = Cost(fixed_s=fixed, per_row_s=t.train_seconds / max(t.rows * t.epochs, 1))
    costs = {name: Cost(c.fixed_s, c.per_row_s + cache_pace.get(name, 0.0)) for name, c in latest.items()}
    if strategy in costs:
        return costs[strategy]
    return min(costs.values(), key=lambda c: (c.per_row_s, c.fixed_s), default=None)


def affordable_rows(share_s: float, costs: Sequence[Cost], low: int, high: int) -> int | None:
    """The most training rows (at most `high`) that each of the trials can have so that their estimated
    seconds together stay within `share_s`; None when even `low` rows would not."""
    per_row = sum(c.per_row_s for c in costs)
    room = share_s - sum(c.fixed_s for c in costs)
    rows = high if per_row <= 0 else min(high, math.floor(room / per_row))
    return rows if rows >= low and room > 0 else None


def first_round(
    left_s: float, dearest: Cost, pool: int, strategies: int, rows: tuple[int, int, int]
) -> tuple[int, int]:
    """(training rows per trial, candidates) of round 0, `rows` = (floor, low, high), given `left_s` seconds
    for all rounds. Every candidate, on as many rows between low and high as its share of the rounds
    affords it; when not even low fits, only the first `strategies` candidates (each strategy at its usual
    learning rate), on as many rows as their share affords, down to floor: a short budget drops learning
    rates first, then steps, and still compares the strategies."""
    floor, low, high = rows
    fits = affordable_rows(left_s / len(halving_rounds(pool)), [dearest] * pool, low, high)
    if fits is not None:
        return fits, pool
    share = left_s / len(halving_rounds(strategies))
    return affordable_rows(share, [dearest] * strategies, floor, high) or floor, strategies


def trial_shape(rows: int, available: int) -> tuple[int, int]:
    """(rows, epochs) of a trial asked for `rows` training examples when the split has `available`:
    more than the split means whole epochs over all of it."""
    if rows <= available:
        return rows, 1
    return available, rows // available


# -- running it ----------------------------------------------------------------------------------------


def search_space(kind: TaskKind | None) -> dict[str, tuple[dict[str, Any], tuple[float, ...]]]:
    """The candidates for the kind's models: IMAGE_SEARCH_SPACE for image inputs, else SEARCH_SPACE."""
    from tasks.kinds.image_sources import IMAGE

    return IMAGE_SEARCH_SPACE if kind is not None and kind.input_column == IMAGE else SEARCH_SPACE


def run_search(
    base: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    record: Path | None = None,
    task: tuple[TaskKind, Path] | None = None,
) -> tuple[SearchResult, FrozenActivations | None, Trained | None]:
    """The search, or the one `record` holds from an earlier attempt of the same run (written there).
    `task`: the project's task and the snapshot folder its splits' files are in (default: text).

    Returns:
        (the result, the activation cache when the chosen candidate trains from one, else None, and the
        chosen candidate's model when its last trial trained the whole configuration, else None).
    """
    from tasks.kinds import load_task
    from tasks.train import FrozenActivations

    if record is not None and record.is_file():
        found = SearchResult.from_dict(json.loads(record.read_text()))
        log.info("strategy search: reusing %s (%s)", record, found.chosen.label())
        return found, FrozenActivations() if found.best().cached_layers else None, None
    activations = FrozenActivations()
    task = task or (load_task("text-classification", None), Path())
    state = _Search(base, train, validation, labels, cfg, activations, task)
    found = _halve(state)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(found.to_dict(), indent=2) + "\n")
    log.info(
        "strategy search: %s chosen after %d trials in %.0f s of %g s (%s); fixed-layer outputs "
        "computed for %d examples, reused for %d",
        found.chosen.label(), len(found.trials), found.seconds, cfg.time_budget_s, found.stopped,
        activations.computed, activations.reused,
    )  # fmt: skip
    kept = state.kept if state.kept and state.trials[state.kept.trial - 1] is found.best() else None
    if kept is not None:
        log.info(
            "strategy search: trial %d trained %s on every training row for train.epochs: its model is "
            "the run's (no second training)", kept.trial, found.chosen.label(),
        )  # fmt: skip
        return found, None, kept
    return found, activations if found.best().cached_layers else None, None


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
    task: tuple[TaskKind, Path]  # the project's task and the snapshot folder of its splits
    started: float = field(default_factory=time.perf_counter)
    trials: list[Trial] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: Trained | None = None  # the best trial of the whole configuration so far, with its model

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
            trial, trained = _trial(self, candidate, number, rows)
            self.trials.append(trial)
            if trained is not None:
                self.keep(trained)
            log.info(
                "trial %d, round %d: %s on %d rows: validation accuracy %.4f, loss %.4f, in %.0f s "
                "(%.0f of %g s spent)", len(self.trials), number, candidate.label(),
                trial.rows * trial.epochs, trial.val_accuracy, trial.val_loss, trial.seconds, self.spent(),
                self.cfg.time_budget_s,
            )  # fmt: skip

    def keep(self, trained: Trained) -> None:
        """Hold the model of a whole-configuration trial while it ranks first in its round (the ranking
        that chooses; a round's trials share their rows): one model in memory, not one per trial."""
        trial = self.trials[trained.trial - 1]
        if survivors([t for t in self.trials if t.round == trial.round], 1)[0] == trial.candidate:
            self.kept = trained


def _halve(state: _Search) -> SearchResult:
    """Successive halving within cfg.time_budget_s (see the module docstring)."""
    cfg, train = state.cfg, state.train
    space = search_space(state.task[0])
    _warm_up(state)
    every = pool = candidates(space)
    # Calibration: the costliest strategy for a few steps, so round 0 is sized by this machine's pace.
    # It always runs (nothing to estimate it from), so there is always a trial to choose from.
    state.run_round(CALIBRATION, pool[:1], min(len(train), CALIBRATION_STEPS * cfg.batch_size))
    most = len(train) * cfg.epochs  # no trial trains longer than the chosen configuration will
    high = min(most, FIRST_ROUND_STEPS * cfg.batch_size)
    low = min(high, MIN_FIRST_ROUND_STEPS * cfg.batch_size)
    floor = min(high, CALIBRATION_STEPS * cfg.batch_size)
    # Round 0 at the calibration's pace for every candidate: an over-estimate for all but the costliest,
    # which leaves more of the budget to the later rounds.
    dearest = estimate_cost(state.trials, pool[0].strategy) or Cost(0, 0)
    rows, size = first_round(state.left(), dearest, len(pool), len(space), (floor, low, high))
    pool, rounds = every[:size], halving_rounds(size)
    state.skipped += [
        f"round 0: {c.label()} (too short a budget for every learning rate)" for c in every[size:]
    ]
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


def _warm_up(search: _Search) -> None:
    """Pay the process's one-time costs before the calibration: importing the model's code and reading its
    weights can take ten times a small trial, and the calibration's fixed part must estimate what every
    later trial sets up, not the cold start. The budget pays for it (it is no trial)."""
    started = time.perf_counter()
    kind = search.task[0]
    kind.processor(search.base, search.cfg.max_length, training=True)
    kind.build_model(search.base, search.labels)
    log.info("strategy search: model code and weights loaded in %.1f s", time.perf_counter() - started)


def _trial(search: _Search, candidate: Candidate, number: int, rows: int) -> tuple[Trial, Trained | None]:
    """One candidate trained on `rows` training examples (a stratified subset, the same rows for every
    candidate of a round and nested across rounds), scored on the whole validation split; with what it
    trained when that was the whole configuration (numbered as the next of the search's trials)."""
    from tasks.kinds.splitting import subsample_examples
    from tasks.train import fine_tune

    cfg = search.cfg
    rows, epochs = trial_shape(rows, len(search.train))
    kind, snapshot = search.task
    subset = subsample_examples(search.train, kind.key(search.train), rows, cfg.seed)
    settings = {**candidate.settings, "strategy": candidate.strategy, "epochs": epochs}
    trial_cfg = cfg.model_copy(update={**settings, "checkpoint_every_steps": 0, "early_stopping_patience": 0})
    started = time.perf_counter()
    cache_before = (search.activations.seconds, search.activations.computed)
    model, processor, result = fine_tune(
        search.base, subset, search.validation, search.labels, trial_cfg, progress=False,
        activations=search.activations, kind=kind, snapshot=snapshot,
    )  # fmt: skip
    whole = len(subset) == len(search.train) and epochs == cfg.epochs
    trial = Trial(
        round=number,
        strategy=candidate.strategy,
        settings=dict(candidate.settings),
        rows=len(subset),
        epochs=epochs,
        val_accuracy=result.best_val_accuracy,
        seconds=time.perf_counter() - started,
        train_seconds=sum(h.seconds for h in result.history),
        cached_layers=result.cached_layers,
        cache_seconds=search.activations.seconds - cache_before[0],
        cache_examples=search.activations.computed - cache_before[1],
        val_loss=result.history[result.best_epoch - 1].val_loss if result.best_epoch else math.nan,
    )
    return trial, Trained(len(search.trials) + 1, model, processor, result) if whole else None
