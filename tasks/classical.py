"""The baselines with no transfer at all: a logistic regression (scikit-learn) on features anyone would
try first, per kind of input:

- text: TF-IDF of word unigrams and bigrams (what a practitioner tries first on labelled text);
- images: the pixels themselves, every image resized to PIXEL_SIDE × PIXEL_SIDE RGB and standardised;
- tagged sentences: a linear-chain CRF on hand-made word features instead (tasks/kinds/token_crf.py),
  scored by entity F1.

Its regularisation (C; the CRF's c1 and c2) is chosen on the validation split, never on test, so it is
tuned as fairly as the arms it is compared with. Which baseline a task gets follows what its examples are
(the kind's ``input_column``), not the task's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.prepare import LABEL, TEXT

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from tasks.kinds.base import TaskKind

NAME = "tfidf-logreg"  # the text arm's strategy in results.json
PIXELS_NAME = "pixels-logreg"  # the image arm's
CRF_NAME = "crf"  # the tagger arm's (tasks/kinds/token_crf.py)
# Inverse regularisation strengths tried on validation: half-decades around scikit-learn's default of 1.
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
# Standardised pixels are thousands of correlated features: the useful C sit lower than for sparse TF-IDF.
PIXEL_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
# Word unigrams and bigrams with sublinear term frequency: the usual strong setting for short reviews.
NGRAMS = (1, 2)
PIXEL_SIDE = 28  # Fashion-MNIST's and MNIST's own side: the pixel baseline sees them unresampled
# What the reports call each baseline: (table column / plot label, short name in gap columns).
DESCRIPTIONS = {
    NAME: ("TF-IDF + logistic regression", "TF-IDF"),
    PIXELS_NAME: (f"logistic regression on {PIXEL_SIDE}×{PIXEL_SIDE} pixels", "pixels"),
    CRF_NAME: ("CRF on hand-made word features", "CRF"),
}


@dataclass(frozen=True)
class ClassicalFit:
    model: Any  # the fitted model of the chosen setting (features + logistic regression; a CRF)
    settings: dict[str, float]  # the chosen regularisation, e.g. {"C": 1.0}
    val_accuracy: float  # its validation score (accuracy; a CRF's: entity F1)
    grid: list[dict[str, float | bool]]  # per setting tried: it, "val_accuracy", "seconds", "chosen"
    seconds: float  # the chosen setting's fit
    parameters: int  # the model's weights (coefficients and intercepts; a CRF's features)


@dataclass(frozen=True)
class Baseline:
    """One kind of input's baseline: its name, the inputs its pipeline takes for a frame's rows, the
    feature steps before the classifier, and its C grid."""

    name: str
    inputs: Callable[[pd.DataFrame], Any]  # what the pipeline's fit/predict take for a frame's rows
    features: Callable[[], list[tuple[str, Any]]]  # fresh feature steps before the classifier
    c_grid: tuple[float, ...]

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame, seed: int) -> ClassicalFit:
        return _fit(self, train, validation, seed, self.c_grid)

    def accuracy(self, model: Pipeline, frame: pd.DataFrame) -> float:
        """Share of `frame`'s rows whose label the model predicts."""
        return float((model.predict(self.inputs(frame)) == frame[LABEL].to_numpy()).mean())


def _tfidf() -> list[tuple[str, Any]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return [("tfidf", TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True))]


def _standardise() -> list[tuple[str, Any]]:
    from sklearn.preprocessing import StandardScaler

    return [("scale", StandardScaler())]


TEXT_BASELINE = Baseline(NAME, lambda frame: frame[TEXT].tolist(), _tfidf, C_GRID)


def baseline(
    kind: TaskKind | None = None, snapshot: Path | None = None, labels: list[str] | None = None
) -> Any:
    """The baseline for the kind's examples (text: TF-IDF; images: pixels of files under `snapshot`;
    tagged sentences: token_crf.CrfBaseline over the entity types `labels`), each with fit(train,
    validation, seed) -> ClassicalFit and accuracy(model, frame) -> its test score; ValueError for inputs
    it has none for."""
    if kind is None or kind.input_column == TEXT:
        return TEXT_BASELINE
    from tasks.kinds.image_sources import IMAGE
    from tasks.kinds.token_sources import TOKENS

    if kind.input_column == TOKENS:
        from tasks.kinds.token_crf import CrfBaseline

        return CrfBaseline(list(labels or []))

    if kind.input_column == IMAGE:
        root, max_pixels = snapshot or Path(), kind.options.max_pixels
        return Baseline(
            PIXELS_NAME, lambda frame: pixels(kind.items(frame, root), max_pixels), _standardise, PIXEL_C_GRID
        )
    raise ValueError(f"no classical baseline for {kind.name} inputs ({kind.input_column!r})")


def pixels(files: list[Path], max_pixels: int) -> np.ndarray:
    """(N, PIXEL_SIDE² × 3) float32 in [0, 1]: each file opened as training opens it (the safe loader,
    RGB), resized to PIXEL_SIDE × PIXEL_SIDE."""
    import numpy as np
    from PIL import Image

    from tasks.kinds.image_files import load_rgb

    rows = []
    for f in files:
        image = load_rgb(Path(f), max_pixels).resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BILINEAR)
        rows.append(np.asarray(image, dtype=np.float32).reshape(-1) / 255.0)
    return np.stack(rows) if rows else np.empty((0, PIXEL_SIDE * PIXEL_SIDE * 3), np.float32)


def fit(
    train: pd.DataFrame, validation: pd.DataFrame, seed: int, c_grid: tuple[float, ...] = C_GRID
) -> ClassicalFit:
    """TF-IDF + logistic regression (the text baseline); see _fit."""
    return _fit(TEXT_BASELINE, train, validation, seed, c_grid)


def accuracy(model: Pipeline, frame: pd.DataFrame) -> float:
    """Share of `frame`'s rows (a `text` column) whose label the text baseline's model predicts."""
    return TEXT_BASELINE.accuracy(model, frame)


def _fit(
    base: Baseline, train: pd.DataFrame, validation: pd.DataFrame, seed: int, c_grid: tuple[float, ...]
) -> ClassicalFit:
    """Fit one model per C on `train` and keep the one with the best validation accuracy.

    Args:
        base: the baseline (its inputs and feature steps).
        train, validation: frames with the kind's input column and `label`.
        seed: the solver's random state.
        c_grid: the C values tried; ties go to the first (the strongest regularisation).
    Returns:
        the chosen model with every C's validation accuracy.
    """
    if not c_grid:
        raise ValueError("c_grid is empty: give at least one C")
    x_train, y_train = base.inputs(train), train[LABEL].tolist()
    x_val, y_val = base.inputs(validation), validation[LABEL].to_numpy()
    grid: list[dict[str, float | bool]] = []
    models = []
    for c in c_grid:
        started = time.perf_counter()
        models.append(_pipeline(base, c, seed).fit(x_train, y_train))
        seconds = time.perf_counter() - started
        val_accuracy = float((models[-1].predict(x_val) == y_val).mean())
        grid.append({"C": c, "val_accuracy": val_accuracy, "seconds": seconds})
    best = max(range(len(grid)), key=lambda i: grid[i]["val_accuracy"])  # the first of equals
    chosen, model = grid[best], models[best]
    for i, cell in enumerate(grid):
        cell["chosen"] = i == best
    classifier = model.named_steps["classifier"]
    return ClassicalFit(
        model,
        {"C": float(chosen["C"])},
        float(chosen["val_accuracy"]),
        grid,
        float(chosen["seconds"]),
        int(classifier.coef_.size + classifier.intercept_.size),
    )


def _pipeline(base: Baseline, c: float, seed: int) -> Pipeline:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    classifier = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    return Pipeline([*base.features(), ("classifier", classifier)])
