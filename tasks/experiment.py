"""Evidence that transfer pays: the arms of the learning curve and of the strategy table, trained and scored
on the project's own splits.

- Learning curve, at 100 / 500 / 2,000 / all training rows:
  - `pretrained`: the pretrained model, every parameter adapting, with params.yaml's settings;
  - `scratch`: the same architecture randomly initialised, with its own learning rate and schedule length
    chosen on the validation split from a small grid (a random init does not learn with the pretrained
    model's settings);
  - `classical`: logistic regression on the inputs' plainest features (tasks/classical.py: TF-IDF for
    text, pixels for images; a CRF on hand-made word features for tagged sentences), the baseline with no
    transfer at all.
- Strategy table: head, freeze, full, gradual and lora on all training rows, each with the settings it is
  usually run with (shown in the table).

Neural arms train with `fine_tune` (the train stage's own loop) through the project's task (tasks/kinds),
so text, image and token projects run the same arms. Every arm is scored by the task's validation score
(accuracy; a tagger's micro entity F1), named in each result's `metric`. Every choice an arm makes is made
on the validation split; each arm is scored once, on the same test split. Tables and plots:
tasks/experiment_report.py.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import TrainConfig

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedModel

    from tasks.kinds.base import TaskKind
    from tasks.train import TrainResult

log = logging.getLogger("transferline.experiment")

CURVE_SIZES = (100, 500, 2000, 0)  # 0 = every training row
INITS = ("pretrained", "scratch", "classical")  # the learning curve's arms at each size
# An arm on a tiny subset still takes at least this many optimisation steps (more epochs), so small
# sizes measure what the data can teach, not how few updates fit in the default epoch count.
MIN_STEPS = 60
# The scratch arm's grid. The rates start at params.yaml's 1e-4, with which a random init stays at the
# majority class on 2,000 rows, and go up: a random init needs larger or more updates than a pretrained
# one. Lengths are multiples of the pretrained arm's epochs. Each cell is a run of its own: the schedule
# decays linearly to zero over the whole run, so a short run cannot be read off a longer run's early
# epochs, where the rate is still high.
SCRATCH_RATES = (1.0e-4, 3.0e-4, 1.0e-3)
SCRATCH_LENGTHS = (1, 3)
# Each strategy with the settings it is normally run with; on top of params.yaml's train section.
STRATEGY_SETTINGS: dict[str, dict[str, Any]] = {
    "head": {"learning_rate": 2.0e-3},  # a linear probe needs a far larger rate than fine-tuning
    "freeze": {"freeze_layers": 4, "cache_frozen": True},
    "full": {"layer_lr_decay": 0.9},
    "gradual": {"unfreeze_every_steps": 100},
    "lora": {"learning_rate": 1.0e-3, "lora_rank": 16, "lora_alpha": 32},
}


@dataclass(frozen=True)
class Arm:
    name: str
    part: str  # "learning-curve" | "strategies"
    init: str  # one of INITS
    train_rows: int  # 0 = all
    settings: dict[str, Any] = field(default_factory=dict)  # train.* changes for this arm


@dataclass(frozen=True)
class ArmOptions:
    """How the arms train beyond params.yaml; one value for the whole command."""

    min_steps: int = MIN_STEPS
    scratch_rates: tuple[float, ...] = SCRATCH_RATES
    scratch_lengths: tuple[int, ...] = SCRATCH_LENGTHS  # multiples of the pretrained arm's epochs


@dataclass(frozen=True)
class ArmResult:
    name: str
    part: str
    init: str
    strategy: str
    train_rows: int
    epochs: int  # 0: not trained in epochs (classical)
    test_accuracy: float
    best_val_accuracy: float
    train_seconds: float  # the chosen setting's training
    trainable_params: int
    total_params: int
    settings: dict[str, Any]
    # Every setting tried on validation (scratch: learning_rate, epochs; classical: C, or c1 and c2), with
    # its val_accuracy (None: diverged), seconds and whether it was chosen; empty for arms that try one.
    grid: list[dict[str, Any]] = field(default_factory=list)
    # What test_accuracy and best_val_accuracy hold: the task's validation metric ("entity F1" for taggers)
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmResult:
        """An arm of results.json; files written before the classical arm say `pretrained`, not `init`."""
        data = dict(data)
        if "pretrained" in data:
            data["init"] = "pretrained" if data.pop("pretrained") else "scratch"
        return cls(**data)


def arm_name(init: str, rows: int) -> str:
    """The learning-curve arm's name, e.g. scratch@500 or classical@all."""
    return f"{init}@{'all' if rows == 0 else rows}"


def curve_arms(sizes: tuple[int, ...] = CURVE_SIZES, inits: tuple[str, ...] = INITS) -> list[Arm]:
    return [
        Arm(
            arm_name(init, rows),
            "learning-curve",
            init,
            rows,
            {} if init == "classical" else {"strategy": "full"},
        )
        for rows in sizes
        for init in inits
    ]


def strategy_arms(strategies: tuple[str, ...] = tuple(STRATEGY_SETTINGS)) -> list[Arm]:
    return [
        Arm(s, "strategies", "pretrained", 0, {"strategy": s, **STRATEGY_SETTINGS[s]}) for s in strategies
    ]


def arm_config(base: TrainConfig, arm: Arm, rows: int, min_steps: int = MIN_STEPS) -> TrainConfig:
    """The arm's train settings; small subsets get enough epochs for `min_steps` steps."""
    cfg = base.model_copy(update={**arm.settings, "checkpoint_every_steps": 0})
    steps_per_epoch = math.ceil(rows / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(min_steps / steps_per_epoch))
    return cfg.model_copy(update={"epochs": epochs})


def majority_accuracy(train: pd.DataFrame, test: pd.DataFrame, kind: TaskKind | None = None) -> float:
    """The floor of every arm: the test score of always answering the training split's most common label
    (a classifier's accuracy; a tagger's most common tag is `O`, which finds no entity: entity F1 0)."""
    from tasks.evaluate import ACCURACY, METRIC_NAMES
    from tasks.prepare import LABEL

    if kind is not None and kind.validation_metric != METRIC_NAMES[ACCURACY]:
        return 0.0
    return float((test[LABEL] == train[LABEL].value_counts().idxmax()).mean())


def run_arm(
    base_model: Path,
    splits: dict[str, pd.DataFrame],
    labels: list[str],
    train_cfg: TrainConfig,
    arm: Arm,
    seed: int,
    options: ArmOptions | None = None,
    task: tuple[TaskKind, Path] | None = None,
) -> ArmResult:
    """Train one arm, making its choices on the validation split, and score it on the test split.
    `task`: the project's task and the snapshot folder its splits' files are in (default: text)."""
    from tasks.kinds import load_task
    from tasks.kinds.splitting import subsample_examples

    options = options or ArmOptions()
    task = task or (load_task("text-classification", None), Path())
    train = subsample_examples(splits["train"], task[0].key(splits["train"]), arm.train_rows or None, seed)
    if arm.init == "classical":
        return _classical_arm(arm, (train, splits, labels), seed, task)
    cfg = arm_config(train_cfg, arm, len(train), options.min_steps)
    log.info("arm %s: %d training rows, %d epoch(s), %s", arm.name, len(train), cfg.epochs, arm.settings)
    grid: list[dict[str, Any]] = []
    data = (train, splits["validation"], labels, task)
    if arm.init == "scratch":
        trained, grid = _scratch_grid(base_model, data, cfg, options)
    else:
        trained = _fine_tune(base_model, data, cfg, pretrained=True)
    accuracy = _test_score(trained, splits["test"], labels, task)
    log.info("arm %s: test %s %.4f in %.0f s", arm.name, task[0].validation_metric, accuracy, trained.seconds)
    chosen = {"learning_rate": trained.cfg.learning_rate} if grid else {}
    return ArmResult(
        name=arm.name,
        part=arm.part,
        init=arm.init,
        strategy=trained.cfg.strategy,
        train_rows=len(train),
        epochs=trained.cfg.epochs,
        test_accuracy=accuracy,
        best_val_accuracy=trained.result.best_val_accuracy,
        train_seconds=trained.seconds,
        trainable_params=trained.result.trainable_params,
        total_params=trained.result.total_params,
        settings={**arm.settings, **chosen},
        grid=grid,
        metric=task[0].validation_metric,
    )


@dataclass(frozen=True)
class _Trained:
    model: PreTrainedModel
    processor: Any  # the kind's input processor (text: the tokenizer; images: the preprocessing)
    result: TrainResult
    cfg: TrainConfig
    seconds: float


# (train, validation, labels, (kind, snapshot)): what every neural arm trains on
_Data = tuple["pd.DataFrame", "pd.DataFrame", list[str], tuple["TaskKind", Path]]


def _fine_tune(base_model: Path, data: _Data, cfg: TrainConfig, pretrained: bool) -> _Trained:
    from tasks.train import fine_tune

    train, validation, labels, (kind, snapshot) = data
    started = time.perf_counter()
    model, processor, result = fine_tune(
        base_model, train, validation, labels, cfg, pretrained=pretrained, kind=kind, snapshot=snapshot
    )
    return _Trained(model, processor, result, cfg, time.perf_counter() - started)


def _scratch_grid(
    base_model: Path, data: _Data, cfg: TrainConfig, options: ArmOptions
) -> tuple[_Trained, list[dict[str, Any]]]:
    """Train the random init once per (length, rate) of the grid; keep the best on validation.

    Ties go to the earlier cell: the shorter run, then the smaller rate (params.yaml's comes first).
    Returns:
        (the chosen run, every cell's learning_rate, epochs, val_accuracy, best_epoch, seconds, chosen).
    """
    from tasks.train import TrainingDiverged

    best: tuple[_Trained, dict[str, Any]] | None = None  # (the run, its cell)
    grid: list[dict[str, Any]] = []
    for factor in options.scratch_lengths:
        for rate in options.scratch_rates:
            cfg_cell = cfg.model_copy(update={"learning_rate": rate, "epochs": cfg.epochs * factor})
            log.info("scratch grid: learning rate %g, %d epoch(s)", rate, cfg_cell.epochs)
            started = time.perf_counter()
            try:
                trained: _Trained | None = _fine_tune(base_model, data, cfg_cell, pretrained=False)
            except TrainingDiverged as err:  # a rate too large for a random init: a result of the grid
                log.warning("scratch grid: learning rate %g diverged: %s", rate, err)
                trained = None
            cell = {
                "learning_rate": rate,
                "epochs": cfg_cell.epochs,
                "val_accuracy": trained.result.best_val_accuracy if trained else None,
                "best_epoch": trained.result.best_epoch if trained else None,
                "seconds": time.perf_counter() - started,
                "chosen": False,
            }
            grid.append(cell)
            if trained and (best is None or cell["val_accuracy"] > best[1]["val_accuracy"]):
                best = (trained, cell)
    if best is None:
        raise TrainingDiverged(
            f"every run of the scratch grid diverged (rates {options.scratch_rates}, "
            f"lengths {options.scratch_lengths}): give smaller rates"
        )
    best[1]["chosen"] = True
    return best[0], grid


def _test_score(
    trained: _Trained, test: pd.DataFrame, labels: list[str], task: tuple[TaskKind, Path]
) -> float:
    """The test split through the inference path, scored as training scores validation (the kind's
    validation_score: accuracy, or a tagger's entity F1 of each word's first sub-token)."""
    from tasks.inference import predict_inputs
    from tasks.kinds.base import class_names

    kind, snapshot = task
    encoded = kind.encode(test, snapshot, labels, trained.processor)
    device = next(trained.model.parameters()).device
    where = (kind, trained.processor, device, trained.result.precision)
    logits = predict_inputs(trained.model, encoded, 128, where)
    return kind.validation_score(logits, encoded.labels, class_names(trained.model.config))


def _classical_arm(
    arm: Arm,
    data: tuple[pd.DataFrame, dict[str, pd.DataFrame], list[str]],
    seed: int,
    task: tuple[TaskKind, Path],
) -> ArmResult:
    """`data`: (the arm's training rows, the splits, the labels)."""
    from tasks import classical

    train, splits, labels = data
    baseline = classical.baseline(*task, labels)
    fitted = baseline.fit(train, splits["validation"], seed)
    accuracy = baseline.accuracy(fitted.model, splits["test"])
    chosen = ", ".join(f"{k}={v:g}" for k, v in fitted.settings.items())
    log.info("arm %s: %s chosen on validation, test %.4f", arm.name, chosen, accuracy)
    return ArmResult(
        name=arm.name,
        part=arm.part,
        init=arm.init,
        strategy=baseline.name,
        train_rows=len(train),
        epochs=0,
        test_accuracy=accuracy,
        best_val_accuracy=fitted.val_accuracy,
        train_seconds=fitted.seconds,
        trainable_params=fitted.parameters,
        total_params=fitted.parameters,
        settings=fitted.settings,
        grid=fitted.grid,
        metric=task[0].validation_metric,
    )
