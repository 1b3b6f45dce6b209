"""Evidence that transfer pays: the learning curve and the strategy table, on the project's own splits.

- Learning curve: test accuracy after training on 100 / 500 / 2,000 / all training rows, for the
  pretrained model and for the same architecture randomly initialised; both train every parameter with the
  same settings, so the gap is what the pretrained weights are worth.
- Strategy table: test accuracy, training time and adapting parameters of head, freeze, full, gradual and
  lora on all training rows, each with the settings it is usually run with (shown in the table).

Every arm trains with `fine_tune` (the train stage's own loop) and is scored on the same test split.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.config import TrainConfig
from tasks.prepare import LABEL, TEXT, subsample

if TYPE_CHECKING:
    from tasks.paths import ProjectPaths

log = logging.getLogger("transferline.experiment")

CURVE_SIZES = (100, 500, 2000, 0)  # 0 = every training row
# An arm on a tiny subset still takes at least this many optimisation steps (more epochs), so small
# sizes measure what the data can teach, not how few updates fit in the default epoch count.
MIN_STEPS = 60
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
    pretrained: bool
    train_rows: int  # 0 = all
    settings: dict[str, Any] = field(default_factory=dict)  # train.* changes for this arm


@dataclass(frozen=True)
class ArmResult:
    name: str
    part: str
    pretrained: bool
    strategy: str
    train_rows: int
    epochs: int
    test_accuracy: float
    best_val_accuracy: float
    train_seconds: float
    trainable_params: int
    total_params: int
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def curve_arms(sizes: tuple[int, ...] = CURVE_SIZES) -> list[Arm]:
    arms = []
    for rows in sizes:
        for pretrained in (True, False):
            init = "pretrained" if pretrained else "scratch"
            label = "all" if rows == 0 else str(rows)
            arms.append(Arm(f"{init}@{label}", "learning-curve", pretrained, rows, {"strategy": "full"}))
    return arms


def strategy_arms(strategies: tuple[str, ...] = tuple(STRATEGY_SETTINGS)) -> list[Arm]:
    return [Arm(s, "strategies", True, 0, {"strategy": s, **STRATEGY_SETTINGS[s]}) for s in strategies]


def arm_config(base: TrainConfig, arm: Arm, rows: int, min_steps: int = MIN_STEPS) -> TrainConfig:
    """The arm's train settings; small subsets get enough epochs for `min_steps` steps."""
    cfg = base.model_copy(update={**arm.settings, "checkpoint_every_steps": 0})
    steps_per_epoch = math.ceil(rows / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(min_steps / steps_per_epoch))
    return cfg.model_copy(update={"epochs": epochs})


def run_arm(
    base_model: Path,
    splits: dict[str, pd.DataFrame],
    labels: list[str],
    train_cfg: TrainConfig,
    arm: Arm,
    seed: int,
    min_steps: int = MIN_STEPS,
) -> ArmResult:
    """Train one arm and score it on the test split."""
    import torch

    from tasks.inference import encode, padding_id, predict_logits
    from tasks.train import fine_tune

    train = subsample(splits["train"], arm.train_rows or None, seed)
    cfg = arm_config(train_cfg, arm, len(train), min_steps)
    log.info("arm %s: %d training rows, %d epoch(s), %s", arm.name, len(train), cfg.epochs, arm.settings)
    started = time.perf_counter()
    model, tokenizer, result = fine_tune(
        base_model, train, splits["validation"], labels, cfg, pretrained=arm.pretrained
    )
    seconds = time.perf_counter() - started
    test = splits["test"]
    encoded = encode(tokenizer, test[TEXT].tolist(), cfg.max_length)
    device = next(model.parameters()).device
    logits = predict_logits(model, encoded, padding_id(tokenizer), 128, device, result.precision)
    truth = torch.tensor([labels.index(v) for v in test[LABEL]])
    accuracy = float((logits.argmax(-1) == truth).float().mean())
    log.info("arm %s: test accuracy %.4f in %.0f s", arm.name, accuracy, seconds)
    return ArmResult(
        name=arm.name,
        part=arm.part,
        pretrained=arm.pretrained,
        strategy=cfg.strategy,
        train_rows=len(train),
        epochs=cfg.epochs,
        test_accuracy=accuracy,
        best_val_accuracy=result.best_val_accuracy,
        train_seconds=seconds,
        trainable_params=result.trainable_params,
        total_params=result.total_params,
        settings=arm.settings,
    )


# -- reports -------------------------------------------------------------------------------------------


def curve_table(results: list[ArmResult]) -> str:
    by_rows: dict[int, dict[bool, ArmResult]] = {}
    for r in results:
        if r.part == "learning-curve":
            by_rows.setdefault(r.train_rows, {})[r.pretrained] = r
    lines = [
        "| training rows | pretrained | from scratch | gain from pretraining | pretrained time (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rows in sorted(by_rows):
        pre, scratch = by_rows[rows].get(True), by_rows[rows].get(False)
        gain = f"{pre.test_accuracy - scratch.test_accuracy:+.4f}" if pre and scratch else "—"
        lines.append(
            f"| {rows:,} | {_acc(pre)} | {_acc(scratch)} | {gain} | "
            f"{f'{pre.train_seconds:.0f}' if pre else '—'} |"
        )
    return "\n".join(lines)


def strategy_table(results: list[ArmResult]) -> str:
    lines = [
        "| strategy | test accuracy | train time (s) | adapting parameters | share | settings |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.part != "strategies":
            continue
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items() if k != "strategy") or "params.yaml"
        lines.append(
            f"| {r.strategy} | {r.test_accuracy:.4f} | {r.train_seconds:.0f} | {r.trainable_params:,} | "
            f"{r.trainable_params / r.total_params:.1%} | {settings}; {r.epochs} epoch(s) |"
        )
    return "\n".join(lines)


def _acc(r: ArmResult | None) -> str:
    return f"{r.test_accuracy:.4f}" if r else "—"


def plot_curve(results: list[ArmResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for pretrained, label in ((True, "pretrained MiniLM"), (False, "same architecture, random init")):
        pts = sorted(
            (r.train_rows, r.test_accuracy)
            for r in results
            if r.part == "learning-curve" and r.pretrained == pretrained
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curve: transfer vs training from scratch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_strategies(results: list[ArmResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.part == "strategies"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r.train_seconds for r in rows], [r.test_accuracy for r in rows])
    for r in rows:
        ax.annotate(
            f"{r.strategy} ({r.trainable_params / r.total_params:.1%})", (r.train_seconds, r.test_accuracy)
        )
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Strategies: accuracy vs training time (share of parameters adapting)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(results: list[ArmResult]) -> dict[str, Any]:
    """The figures of the evidence command's last line."""
    strategies = [r for r in results if r.part == "strategies"]
    best = max(strategies, key=lambda r: r.test_accuracy) if strategies else None
    at_500 = {r.pretrained: r.test_accuracy for r in results if r.name.endswith("@500")}
    gap = at_500[True] - at_500[False] if len(at_500) == 2 else None
    return {
        "best_strategy": best.strategy if best else None,
        "best_test_accuracy": round(best.test_accuracy, 4) if best else None,
        "best_train_seconds": round(best.train_seconds, 1) if best else None,
        "pretrained_minus_scratch_at_500": round(gap, 4) if gap is not None else None,
    }


def write_results(paths: ProjectPaths, results: list[ArmResult], context: dict[str, Any]) -> list[Path]:
    """Markdown tables, PNG plots and results.json under docs/results/; returns the files written."""
    import json

    out = paths.results_dir
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    # Running one part keeps the other part's latest results (tables of both stay consistent).
    parts = {r.part for r in results}
    if (out / "results.json").is_file():
        earlier = json.loads((out / "results.json").read_text()).get("arms", [])
        results = [ArmResult(**a) for a in earlier if a["part"] not in parts] + results
    (out / "results.json").write_text(
        json.dumps(
            {"context": context, "summary": summary(results), "arms": [r.to_dict() for r in results]},
            indent=2,
        )
        + "\n"
    )
    header = (
        f"Data: {context['data']}; test rows: {context['test_rows']}; base model: {context['base_model']}; "
        f"machine: {context['machine']}; {context['date']}.\n"
    )
    if any(r.part == "learning-curve" for r in results):
        (out / "learning_curve.md").write_text(f"# Learning curve\n\n{header}\n{curve_table(results)}\n")
        plot_curve(results, out / "learning_curve.png")
        written += [out / "learning_curve.md", out / "learning_curve.png"]
    if any(r.part == "strategies" for r in results):
        (out / "strategies.md").write_text(f"# Strategies\n\n{header}\n{strategy_table(results)}\n")
        plot_strategies(results, out / "strategies.png")
        written += [out / "strategies.md", out / "strategies.png"]
    return written
