"""evaluate stage: score a model on the held-out test split.

The challenger and (in the flow) the current champion are scored on exactly the same rows, so the gate
compares like with like. Metrics: accuracy, macro-F1, per-class precision/recall/F1 and the confusion
matrix (rows = true label, columns = predicted label, both in ``data.labels`` order).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Config, ConfigError, load_config
from tasks.paths import ProjectPaths
from tasks.prepare import LABEL, TEXT
from tasks.runtime import configure_environment
from tasks.train import METADATA_FILE, choose_device, choose_precision, encode, predict_logits, read_split

log = logging.getLogger("transferline.evaluate")


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
    predictions: list[str]

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat metrics for MLflow, e.g. test_accuracy, test_recall_fresh."""
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1}
        for label, m in self.per_class.items():
            out[f"{prefix}precision_{label}"] = m.precision
            out[f"{prefix}recall_{label}"] = m.recall
            out[f"{prefix}f1_{label}"] = m.f1
        return out

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("predictions")
        return data


@dataclass(frozen=True)
class Evaluation:
    """The challenger and, when one exists, the champion, on the same test rows."""

    challenger: EvalResult
    champion: EvalResult | None
    champion_version: str | None


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
        predictions=list(y_pred),
    )


def predict_labels(model_dir: Path, texts: list[str], batch_size: int, max_length: int) -> list[str]:
    """Label names predicted by the saved model in model_dir (safetensors only)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    meta_file = model_dir / METADATA_FILE
    if meta_file.is_file():  # score with the length the model was trained with
        max_length = json.loads(meta_file.read_text()).get("max_length", max_length)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    device = choose_device("auto")
    model.to(device)
    logits = predict_logits(
        model, encode(tokenizer, texts, max_length), tokenizer.pad_token_id or 0, batch_size, device,
        choose_precision("auto", device),
    )  # fmt: skip
    id2label = model.config.id2label
    return [id2label[i] for i in logits.argmax(-1).tolist()]


def evaluate_model(model_dir: Path, test: pd.DataFrame, cfg: Config, name: str) -> EvalResult:
    predictions = predict_labels(
        model_dir, test[TEXT].tolist(), cfg.evaluate.batch_size, cfg.train.max_length
    )
    result = compute_metrics(test[LABEL].tolist(), predictions, cfg.data.labels, name)
    log.info(
        "%s: test accuracy %.4f, macro-F1 %.4f on %d rows", name, result.accuracy, result.macro_f1, result.n
    )
    return result


def write_reports(paths: ProjectPaths, result: EvalResult, test: pd.DataFrame) -> None:
    """metrics.json (DVC metrics), predictions.csv (DVC confusion plot) and confusion_matrix.png."""
    out = paths.evaluation_dir
    out.mkdir(parents=True, exist_ok=True)
    paths.metrics_file.write_text(json.dumps(result.summary(), indent=2, sort_keys=True) + "\n")
    pd.DataFrame({"actual": test[LABEL].tolist(), "predicted": result.predictions}).to_csv(
        paths.predictions_file, index=False
    )
    plot_confusion(result, paths.confusion_png)


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


def run_evaluate(paths: ProjectPaths, cfg: Config) -> EvalResult:
    """Score models/challenger on the test split and write the evaluation reports."""
    if not paths.challenger_dir.is_dir():
        raise FileNotFoundError(f"{paths.challenger_dir} is missing: run the train stage first")
    test = read_split(paths, "test")
    result = evaluate_model(paths.challenger_dir, test, cfg, "challenger")
    write_reports(paths, result, test)
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    paths: ProjectPaths, cfg: Config, champion_dir: Path | None, champion_version: str | None
) -> Evaluation:
    challenger = run_evaluate(paths, cfg)
    champion = None
    if champion_dir is not None:
        champion = evaluate_model(
            champion_dir, read_split(paths, "test"), cfg, f"champion v{champion_version}"
        )
    return Evaluation(challenger, champion, champion_version)


def main() -> None:
    """DVC stage entry point: ``python -m tasks.evaluate`` from the project root."""
    configure_environment()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = ProjectPaths.at(".")
    try:
        result = run_evaluate(paths, load_config(paths.params))
    except ConfigError as err:
        print(f"evaluate: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"evaluate: test accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f}")


if __name__ == "__main__":
    main()
