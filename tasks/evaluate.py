"""evaluate stage: score a model on the held-out test split.

The challenger and the current champion (models/champion.json) are scored on exactly the same rows, so
the gate compares like with like. Metrics: accuracy, macro-F1, per-class precision/recall/F1 and the
confusion matrix (rows = true label, columns = predicted label, both in ``data.labels`` order). Each task
scores a split itself (``TaskKind.score``): token classification gives micro entity F1 as its headline, per
entity type scores and per-sentence counts (tasks/kinds/token_evaluate.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from tasks import caching
from tasks.champion import Champion, load_champion
from tasks.config import Config, ConfigError, EvaluateConfig, load_config
from tasks.inference import NON_FINITE, Predictor, measure_latency
from tasks.paths import ProjectPaths
from tasks.prepare import LABEL, file_sha256, read_split
from tasks.runtime import configure_environment, stage_logging

log = logging.getLogger("transferline.evaluate")

ACCURACY, F1 = "accuracy", "f1"  # EvalResult.metric: the headline metric a result carries
# How reports name each headline metric (F1 is micro entity F1: exact span and type).
METRIC_NAMES = {ACCURACY: "accuracy", F1: "entity F1"}


def recorded_metric(metrics: Mapping[str, float]) -> str:
    """The headline metric a registered version recorded (its MLflow metrics): F1 where the run logged
    ``test_f1`` (a tagger), ACCURACY otherwise."""
    return F1 if f"test_{F1}" in metrics else ACCURACY


def recorded_headline(metrics: Mapping[str, float]) -> tuple[str, float | None]:
    """The headline test metric a registered version recorded, named for reports, and its value."""
    metric = recorded_metric(metrics)
    return f"test {METRIC_NAMES[metric]}", metrics.get(f"test_{metric}")


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class EvalResult:
    name: str  # "challenger" or "champion v3"
    labels: list[str]
    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion: list[list[int]]
    truth: list[str]  # per test row, in row order: the paired tests of the gate need them
    predictions: list[str]
    # The headline the gate judges: "accuracy", or "f1" (micro entity F1 of token classification, whose
    # rows are sentences and whose per_class are entity types: `counts` holds each sentence's (tp, fp, fn)
    # for the paired bootstrap of the F1 difference).
    metric: str = ACCURACY
    f1: float | None = None
    counts: list[list[int]] | None = None

    @property
    def headline_name(self) -> str:
        """How reports name `metric`: "accuracy" or "entity F1"."""
        return METRIC_NAMES[self.metric]

    @property
    def headline(self) -> float:
        """The value of `metric`: what the gate's floor, comparison and retention read."""
        return float(getattr(self, self.metric))

    def correct(self) -> list[bool]:
        return [t == p for t, p in zip(self.truth, self.predictions, strict=True)]

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat metrics for MLflow, e.g. test_accuracy, test_recall_fresh (entities: test_f1 and per type)."""
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1}
        if self.metric == F1:
            tp, fp, fn = (sum(row[i] for row in self.counts or []) for i in range(3))
            out[f"{prefix}f1"] = float(self.f1) if self.f1 is not None else float("nan")
            out[f"{prefix}precision"] = tp / (tp + fp) if tp + fp else 0.0
            out[f"{prefix}recall"] = tp / (tp + fn) if tp + fn else 0.0
        for label, m in self.per_class.items():
            out[f"{prefix}precision_{label}"] = m.precision
            out[f"{prefix}recall_{label}"] = m.recall
            out[f"{prefix}f1_{label}"] = m.f1
        return out

    def summary(self) -> dict:
        data = asdict(self)
        for per_row in ("predictions", "truth", "counts"):
            data.pop(per_row)
        if self.metric == ACCURACY:  # classification reports keep exactly their fields
            data.pop("metric")
            data.pop("f1")
        return data


@dataclass(frozen=True)
class Budgets:
    """Serving costs of the challenger, measured on this machine (latency: see measure_latency)."""

    latency_p95_ms: float  # single-example inference, warm: what the call takes on an idle core
    weights_mb: float  # size of model.safetensors
    latency_method: str = ""  # how latency_p95_ms was measured, for the gate's report
    latency_wall_p95_ms: float | None = None  # the same calls' wall time (other load inflates it)
    champion_latency_p95_ms: float | None = None  # the champion, measured in the same windows


@dataclass(frozen=True)
class Retention:
    """Both models on the retention set (by default the champion's own test split): forgetting check."""

    challenger: EvalResult
    champion: EvalResult


@dataclass(frozen=True)
class Evaluation:
    """The challenger and, when one exists, the champion, on the same test rows."""

    challenger: EvalResult
    champion: EvalResult | None
    champion_version: str | None
    budgets: Budgets | None = None
    retention: Retention | None = None


def compute_metrics(y_true: list[str], y_pred: list[str], labels: list[str], name: str) -> EvalResult:
    """Pure metric computation; predictions outside `labels` count as errors of every class."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred, strict=True):
        if p in index:
            confusion[index[t]][index[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(1 for p in y_pred if p == label)
        support = sum(1 for t in y_true if t == label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = ClassMetrics(precision, recall, f1, support)
    correct = sum(t == p for t, p in zip(y_true, y_pred, strict=True))
    return EvalResult(
        name=name,
        labels=list(labels),
        n=len(y_true),
        accuracy=correct / len(y_true) if y_true else float("nan"),
        macro_f1=sum(m.f1 for m in per_class.values()) / len(per_class),
        per_class=per_class,
        confusion=confusion,
        truth=list(y_true),
        predictions=list(y_pred),
    )


def measure_budgets(
    predictor: Predictor, texts: list[Any], cfg: EvaluateConfig, champion: Predictor | None = None
) -> Budgets:
    """Serving costs of `predictor`'s model on this machine: warm one-text p95 latency (the champion's
    too when given, measured in the same windows), weights size."""
    weights = sum(p.stat().st_size for p in predictor.model_dir.glob("*.safetensors"))
    models = [predictor] if champion is None else [predictor, champion]
    latency, *others = measure_latency(models, texts, cfg.latency_windows, cfg.latency_inputs)
    return Budgets(
        latency_p95_ms=latency.p95_ms,
        weights_mb=weights / 1e6,
        latency_method=latency.method(),
        latency_wall_p95_ms=latency.wall_p95_ms,
        champion_latency_p95_ms=others[0].p95_ms if others else None,
    )


def score(
    predictor: Predictor, frame: pd.DataFrame, cfg: Config, name: str, snapshot: Path | None = None
) -> EvalResult:
    """`predictor` on the rows of a prepared split, scored by its task; `snapshot`: the folder its files
    are in (tasks whose inputs are files)."""
    return predictor.kind.score(
        predictor, frame, snapshot or Path(), cfg.data.labels, name, cfg.evaluate.batch_size
    )


def score_classes(
    predictor: Predictor, frame: pd.DataFrame, snapshot: Path, labels: list[str], name: str, batch_size: int
) -> EvalResult:
    """One label per row (text and image classification): accuracy, macro-F1, per class, confusion."""
    items = predictor.kind.items(frame, snapshot)
    predictions = predictor.predict(items, batch_size)
    result = compute_metrics(frame[LABEL].tolist(), predictions, labels, name)
    broken = predictions.count(NON_FINITE)
    if broken:  # argmax of NaN logits is some class: the accuracy would look like a real one
        log.error("%s: non-finite outputs on %d of %d rows: its accuracy is NaN", name, broken, result.n)
        result = dataclasses.replace(result, accuracy=float("nan"), macro_f1=float("nan"))
    log.info("%s: accuracy %.4f, macro-F1 %.4f on %d rows", name, result.accuracy, result.macro_f1, result.n)
    return result


def write_reports(paths: ProjectPaths, result: EvalResult, test: pd.DataFrame) -> None:
    """metrics.json (DVC metrics), predictions.csv (DVC confusion plot) and confusion_matrix.png."""
    out = paths.evaluation_dir
    out.mkdir(parents=True, exist_ok=True)
    paths.metrics_file.write_text(json.dumps(result.summary(), indent=2, sort_keys=True) + "\n")
    pd.DataFrame({"actual": result.truth, "predicted": result.predictions}).to_csv(
        paths.predictions_file, index=False
    )
    if result.confusion:
        plot_confusion(result, paths.confusion_png)
    else:  # entity results have no confusion of labels: the same file shows their F1 per type
        plot_type_f1(result, paths.confusion_png)


def plot_confusion(result: EvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2 + 0.5 * len(result.labels), 2.8 + 0.5 * len(result.labels)))
    ax.imshow(result.confusion, cmap="Blues")
    ax.set_xticks(range(len(result.labels)), result.labels)
    ax.set_yticks(range(len(result.labels)), result.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    peak = max(max(row) for row in result.confusion) or 1
    for i, row in enumerate(result.confusion):
        for j, count in enumerate(row):
            ax.text(
                j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black"
            )
    ax.set_title(f"{result.name}: accuracy {result.accuracy:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_type_f1(result: EvalResult, path: Path) -> None:
    """Horizontal bars of each entity type's F1, with its support."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    types = list(result.per_class)
    fig, ax = plt.subplots(figsize=(5.5, 1.2 + 0.35 * len(types)))
    ax.barh(range(len(types)), [result.per_class[t].f1 for t in types], color="tab:blue")
    ax.set_yticks(range(len(types)), [f"{t} ({result.per_class[t].support})" for t in types])
    ax.invert_yaxis()  # declared order, top to bottom
    ax.set_xlim(0, 1)
    ax.set_xlabel("entity F1 (support)")
    ax.set_title(f"{result.name}: micro entity F1 {result.headline:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_evaluate(paths: ProjectPaths, cfg: Config, test: pd.DataFrame) -> tuple[EvalResult, Predictor]:
    """Score models/challenger on the test split and write the evaluation reports."""
    if not paths.challenger_dir.is_dir():
        raise FileNotFoundError(f"{paths.challenger_dir} is missing: run the train stage first")
    predictor = Predictor(paths.challenger_dir, cfg.train.max_length)
    result = score(predictor, test, cfg, "challenger", paths.prepared_dir)
    write_reports(paths, result, test)
    return result, predictor


def _retention(
    challenger: Predictor, champion: Predictor, retention_file: Path, cfg: Config, version: str
) -> Retention:
    frame, snapshot = pd.read_parquet(retention_file), retention_file.parent
    return Retention(
        challenger=score(challenger, frame, cfg, "challenger on the retention set", snapshot),
        champion=score(champion, frame, cfg, f"champion v{version} on the retention set", snapshot),
    )


def evaluate_models(paths: ProjectPaths, cfg: Config, champion: Champion | None) -> Evaluation:
    """Challenger and champion on this run's test rows, both on the retention set, and serving budgets;
    writes the evaluation reports and reports/evaluation/evaluation.json (the gate's input).

    The retention set is the champion's own test split (logged with its MLflow run): a challenger trained
    on new data must not forget what the champion was judged on.
    """
    test = read_split(paths, "test")
    challenger, predictor = run_evaluate(paths, cfg, test)
    scored = retention = champ = None
    if champion is not None:
        champ = Predictor(champion.model_dir, cfg.train.max_length)
        scored = score(champ, test, cfg, f"champion v{champion.version}", paths.prepared_dir)
        retention_file = champion.retention_file
        if retention_file is not None and retention_file.is_file():
            if file_sha256(retention_file) == file_sha256(paths.split_file("test")):
                retention = Retention(challenger, scored)  # same rows: no need to score twice
            else:
                retention = _retention(predictor, champ, retention_file, cfg, champion.version)
    budgets = measure_budgets(predictor, predictor.kind.items(test, paths.prepared_dir), cfg.evaluate, champ)
    log.info("budgets: p95 latency %.1f ms, weights %.1f MB", budgets.latency_p95_ms, budgets.weights_mb)
    evaluation = Evaluation(challenger, scored, champion.version if champion else None, budgets, retention)
    write_evaluation(paths, evaluation)
    return evaluation


def write_evaluation(paths: ProjectPaths, evaluation: Evaluation) -> None:
    """evaluation.json: every field, per-row predictions included (the gate's paired tests need them).
    Keys keep their order: per-class results follow data.labels, which breaks the gate's ties."""
    paths.evaluation_dir.mkdir(parents=True, exist_ok=True)
    paths.evaluation_file.write_text(json.dumps(asdict(evaluation)) + "\n")


def read_evaluation(paths: ProjectPaths) -> Evaluation:
    """The Evaluation that evaluate_models wrote (what the gate stage decides on)."""
    if not paths.evaluation_file.is_file():
        raise FileNotFoundError(f"{paths.evaluation_file} is missing: run the evaluate stage first")
    data = json.loads(paths.evaluation_file.read_text())
    champion, budgets, kept = data["champion"], data["budgets"], data["retention"]
    retention = Retention(_eval_result(kept["challenger"]), _eval_result(kept["champion"])) if kept else None
    return Evaluation(
        challenger=_eval_result(data["challenger"]),
        champion=_eval_result(champion) if champion else None,
        champion_version=data["champion_version"],
        budgets=Budgets(**budgets) if budgets else None,
        retention=retention,
    )


def _eval_result(fields: dict) -> EvalResult:
    per_class = {label: ClassMetrics(**m) for label, m in fields["per_class"].items()}
    return EvalResult(**{**fields, "per_class": per_class})


@task(name="evaluate", cache_policy=caching.EVALUATE)
def evaluate_task(paths: ProjectPaths, cfg: Config, champion: Champion | None) -> Evaluation:
    return evaluate_models(paths, cfg, champion)


def main() -> None:
    """DVC stage entry point: ``python -m tasks.evaluate`` from the project root."""
    configure_environment()
    stage_logging()
    paths = ProjectPaths.at(".")
    try:
        evaluation = evaluate_models(paths, load_config(paths.params), load_champion(paths))
    except (ConfigError, FileNotFoundError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    ch, champion = evaluation.challenger, evaluation.champion
    versus = f"; champion v{evaluation.champion_version} {champion.headline:.4f}" if champion else ""
    print(f"evaluate: test {METRIC_NAMES[ch.metric]} {ch.headline:.4f}, macro-F1 {ch.macro_f1:.4f}{versus}")


if __name__ == "__main__":
    main()
